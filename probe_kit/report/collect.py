"""Gathering what a report shows from a study folder; only result files are read, never recomputed.

What each analyzer's numbers are comes from its registry metadata (``meta``: role, metrics, chance),
as recorded in its ``result.json`` (results written before roles existed fall back to the registry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# analyzers a study is expected to have, and what rebuilds each ("{cache}" and "{results}" are filled in)
EXPECTED = ("lens", "tuned-lens", "probe-linear", "probe-mlp", "probe-dense", "flops", "rollout", "clustering")
EXPECTED_ALSO = ("attribution",)


@dataclass(frozen=True)
class Column:
    """One per-layer column of the evidence table: ``analyzer``'s ``metric`` under ``label``."""

    analyzer: str
    metric: str
    label: str
    role: str
    chance: str | None = None

    @property
    def key(self) -> str:
        return f"{self.analyzer}:{self.metric}"

    @property
    def percent(self) -> bool:
        return self.metric.startswith("fraction")


@dataclass
class ReportData:
    folder: Path
    results: dict[str, dict] = field(default_factory=dict)
    arrays: dict[str, dict] = field(default_factory=dict)  # analyzer -> arrays.npz contents
    decision: dict | None = None
    exits_eval: dict | None = None
    designs: dict | None = None  # designs/result.json: the exit-design comparison (heads/designs.py)
    exits_config: dict | None = None
    experiment: dict | None = None
    cache_info: dict | None = None
    val_persons: int | None = None  # ground-truth persons on the images readouts were scored on
    hints: list[dict] = field(default_factory=list)  # {"what", "commands"}: how to measure what is missing
    roles: dict[str, dict] = field(default_factory=dict)  # analyzer -> meta {"role", "metrics", "chance"}

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def layers(self) -> list[int]:
        found = {int(k) for r in self.results.values() for k in r.get("layers", {})}
        return sorted(found)

    @property
    def depth(self) -> int | None:
        """Number of blocks of the model studied."""
        for result in self.results.values():
            if result.get("profile"):
                return len(result["profile"]["blocks"])
        if self.cache_info:
            return self.cache_info["num_layers"]
        return max(self.layers) if self.layers else None

    def by_role(self, role: str) -> list[str]:
        """Analyzers present with ``role``, readouts in the registry's order of names."""
        return [n for n in sorted(self.results) if self.roles.get(n, {}).get("role") == role]

    def reference_readout(self) -> str | None:
        """The readout registered as the final layer's reference (the model's own head), if present."""
        return next((n for n in self.by_role("readout") if self.roles[n].get("reference")), None)

    def columns(self) -> list[Column]:
        """Readout AP50s, then every evidence metric, then cost: the per-layer table's columns."""
        cols = []
        for role in ("readout", "evidence", "cost"):
            for name in self.by_role(role):
                meta = self.roles[name]
                metrics = meta["metrics"][:1] if role == "readout" else meta["metrics"]
                cols += [Column(name, key, label, role, meta.get("chance")) for key, label in metrics]
        return cols

    def value(self, analyzer: str, layer: int, metric: str) -> Any:
        return self.results.get(analyzer, {}).get("layers", {}).get(str(layer), {}).get(metric)

    def table(self) -> list[dict]:
        """One row per layer: every column's value (None where not measured), plus chance levels."""
        rows = []
        for layer in self.layers:
            row: dict[str, Any] = {"layer": layer}
            for col in self.columns():
                row[col.key] = self.value(col.analyzer, layer, col.metric)
                if col.chance:
                    row[f"{col.analyzer}:{col.chance}"] = self.value(col.analyzer, layer, col.chance)
            rows.append(row)
        return rows

    def best_readout(self, layer: int) -> tuple[str, float] | None:
        """(analyzer, AP50) of the best readout at ``layer``."""
        found = [(n, self.value(n, layer, "AP50")) for n in self.by_role("readout")]
        found = [(n, v) for n, v in found if v is not None]
        return max(found, key=lambda item: item[1]) if found else None


def _read(path: Path) -> dict | None:
    from probe_kit.io import read_json

    return read_json(path) if path.is_file() else None


def _roles(results: dict[str, dict]) -> dict[str, dict]:
    """Each result's recorded meta; the registry's for results written before analyzers recorded theirs."""
    roles = {n: r["meta"] for n, r in results.items() if r.get("meta")}
    if len(roles) < len(results):
        from probe_kit.analyzers import analyzer_meta

        registry = analyzer_meta()
        roles |= {n: registry[n] for n in results if n not in roles and n in registry}
    return roles


def _cache_info(cache_path: str, results: dict[str, dict]) -> tuple[dict, int | None]:
    """What the cache holds, and the ground-truth persons on the images the readouts were scored on."""
    from probe_kit.cache.reader import FeatureCache

    with FeatureCache(cache_path) as cache:
        info = {
            "path": cache_path,
            "fingerprint": cache.fingerprint,
            "model": cache.model["name"],
            "revision": cache.model["revision"],
            "weights": cache.model["fingerprint"],
            "num_layers": cache.depth,
            "dataset": cache.dataset,
            "versions": json.loads(cache.attrs()["versions"]),
            "images": cache.num_images,
            "layers": list(cache.layers),
            "tokens": list(cache.tokens),
            "maps": list(cache.maps),
        }
        scored = next((set(r["split"]["val_image_ids"]) for r in results.values() if "split" in r), None)
        persons = None
        if scored:
            persons = sum(len(s.boxes) for s in cache.samples() if s.image_id in scored)
    return info, persons


def _data_text(dataset: dict | None) -> str:
    if dataset and dataset.get("kind") and dataset.get("path"):
        return f"{dataset['kind']}:{dataset['path']}"
    return "synth:data/synth"


def _hints(data: ReportData, results_dir: Path) -> list[dict]:
    """Runnable commands for every missing piece (tested by parsing them against the CLI)."""
    cache = (data.cache_info or {}).get("path") or "feature_cache/NAME.h5"
    hints = []
    for name in EXPECTED + EXPECTED_ALSO:
        if name in data.results:
            continue
        commands = [f"probe-kit analyze {name} --cache {cache} --layers all --out {results_dir / name}"]
        if name == "rollout" and not (data.cache_info or {}).get("maps"):
            attention_cache = str(Path(cache).with_name(Path(cache).stem + "-attention.h5"))
            model = (data.cache_info or {}).get("model", "reference")
            data_text = _data_text((data.cache_info or {}).get("dataset"))
            commands = [
                f"probe-kit cache --model {model} --data {data_text} --layers all --tokens det --attention "
                + f"--out {attention_cache}",
                f"probe-kit analyze rollout --cache {attention_cache} --layers all --out {results_dir / name}",
            ]
        hints.append({"what": name, "commands": commands})
    if data.decision is None and data.results:
        hints.append({"what": "decision", "commands": [f"probe-kit decide --results {results_dir}"]})
    if data.exits_eval is None:
        depth = data.depth or 12
        layers = ",".join(str(max(1, round(depth * f))) for f in (0.25, 0.5, 0.75))
        exits_dir = data.folder / "exits"
        hints.append(
            {
                "what": "exit heads and their evaluation",
                "commands": [
                    f"probe-kit train-exits --cache {cache} --layers {layers} --out {exits_dir}",
                    f"probe-kit evaluate-exits --exits {exits_dir} --data "
                    + f"{_data_text((data.cache_info or {}).get('dataset'))} --out {data.folder / 'exits_eval'}",
                ],
            }
        )
    return hints


def missing_stages(folder: Path) -> list[str]:
    """What a study has not measured yet (the report's "Not yet measured" section), by name."""
    return [hint["what"] for hint in collect(folder).hints]


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
    data.roles = _roles(data.results)
    data.decision = _read(results_dir / "decision.json")
    data.exits_eval = _read(folder / "exits_eval" / "result.json")
    data.designs = _read(folder / "designs" / "result.json")
    data.exits_config = _read(folder / "exits" / "config.json")
    data.experiment = _read(folder / "experiment.json")
    if not data.results and data.exits_eval is None:
        raise ValueError(f"{folder}: nothing to report (no <analyzer>/result.json, no exits_eval/result.json)")
    cache_path = next((r["cache"] for r in data.results.values() if "cache" in r), None)
    if cache_path and Path(cache_path).is_file():
        data.cache_info, data.val_persons = _cache_info(cache_path, data.results)
    data.hints = _hints(data, results_dir)
    return data
