"""Gathering what a report shows from a study folder; only result files are read, never recomputed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

READOUTS = ("lens", "tuned-lens", "probe-linear", "probe-mlp", "probe-dense")
EXPECTED = {
    "lens": "probe-kit analyze lens",
    "tuned-lens": "probe-kit analyze tuned-lens",
    "probe-linear": "probe-kit analyze probe-linear",
    "probe-mlp": "probe-kit analyze probe-mlp",
    "probe-dense": "probe-kit analyze probe-dense",
    "flops": "probe-kit analyze flops",
    "rollout": "probe-kit cache --attention, then probe-kit analyze rollout",
    "clustering": "probe-kit analyze clustering",
    "attribution": "probe-kit analyze attribution",
}


@dataclass
class ReportData:
    folder: Path
    results: dict[str, dict] = field(default_factory=dict)
    arrays: dict[str, dict] = field(default_factory=dict)  # analyzer -> arrays.npz contents
    decision: dict | None = None
    exits_eval: dict | None = None
    exits_config: dict | None = None
    experiment: dict | None = None
    cache_info: dict | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[int]:
        found = {int(k) for r in self.results.values() for k in r.get("layers", {})}
        return sorted(found)

    def table(self) -> list[dict]:
        """One row per layer: AP50 of each readout, cumulative GFLOPs (None where not measured)."""
        rows = []
        flops = self.results.get("flops", {}).get("layers", {})
        for layer in self.layers:
            row = {"layer": layer}
            for name in READOUTS:
                row[name] = self.results.get(name, {}).get("layers", {}).get(str(layer), {}).get("AP50")
            row["gflops"] = flops.get(str(layer), {}).get("gflops_to_exit")
            rollout = self.results.get("rollout", {}).get("layers", {}).get(str(layer), {})
            row["rollout_inbox"] = rollout.get("inbox_mass")
            row["rollout_chance"] = rollout.get("chance_mass")
            clustering = self.results.get("clustering", {}).get("layers", {}).get(str(layer), {})
            row["patch_knn"] = clustering.get("patch_knn_balanced_accuracy")
            row["det_knn"] = clustering.get("det_knn_balanced_accuracy")
            row["kl_to_final"] = self.results.get("lens", {}).get("layers", {}).get(str(layer), {}).get("kl_to_final")
            rows.append(row)
        return rows


def _read(path: Path) -> dict | None:
    from probe_kit.io import read_json

    return read_json(path) if path.is_file() else None


def collect(folder: Path) -> ReportData:
    """Read a study folder (``probe-kit run``/``demo`` output) or a bare results folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such results folder")
    results_dir = folder / "results" if (folder / "results").is_dir() else folder
    data = ReportData(folder)
    for path in sorted(results_dir.glob("*/result.json")):
        content = _read(path)  # corrupt JSON is refused naming the file; exits_eval/result.json is skipped
        if isinstance(content, dict) and isinstance(content.get("analyzer"), str):
            data.results[content["analyzer"]] = content
            if (path.parent / "arrays.npz").is_file():
                import numpy as np

                with np.load(path.parent / "arrays.npz") as arrays:
                    data.arrays[content["analyzer"]] = {k: arrays[k] for k in arrays.files}
    data.decision = _read(results_dir / "decision.json")
    data.exits_eval = _read(folder / "exits_eval" / "result.json")
    data.exits_config = _read(folder / "exits" / "config.json")
    data.experiment = _read(folder / "experiment.json")
    if not data.results and data.exits_eval is None:
        raise ValueError(f"{folder}: nothing to report (no <analyzer>/result.json, no exits_eval/result.json)")
    cache_path = next((r["cache"] for r in data.results.values() if "cache" in r), None)
    if cache_path and Path(cache_path).is_file():
        from probe_kit.cache.reader import FeatureCache

        with FeatureCache(cache_path) as cache:
            data.cache_info = {
                "path": cache_path,
                "fingerprint": cache.fingerprint,
                "model": cache.model["name"],
                "revision": cache.model["revision"],
                "weights": cache.model["fingerprint"],
                "dataset": cache.dataset,
                "versions": json.loads(cache.attrs()["versions"]),
                "images": cache.num_images,
                "layers": list(cache.layers),
                "tokens": list(cache.tokens),
            }
    data.missing = [f"{name}: run {how}" for name, how in EXPECTED.items() if name not in data.results]
    if data.decision is None:
        data.missing.append("decision: run probe-kit decide --results DIR")
    if data.exits_eval is None:
        data.missing.append("exit evaluation: run probe-kit train-exits and probe-kit evaluate-exits")
    return data
