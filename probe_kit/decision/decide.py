"""Turning analyzer results into a recommendation. Pure: same results, same decision.

Evidence per layer is the best COCO AP50 any det-token readout reached there (detection lens,
tuned lens, linear/MLP probe): what an exit head reading that layer's detection tokens can be
expected to achieve. It is judged against the final layer (the lens at the last layer is the
model itself) with the original study's minimum bars as defaults: AP50 30/50/70/85% at layers
3/6/9/12, i.e. exits at 25/50/75% depth need 30/85, 50/85 and 70/85 of the final AP50 (linear in
between), and later exits must not be worse than earlier ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

EXIT_READOUTS = ("lens", "tuned-lens", "probe-linear", "probe-mlp")
VERDICTS = ("early exits viable", "only late exits viable", "not viable")


@dataclass(frozen=True)
class Criteria:
    """What an exit must reach; defaults from the original study's minimum bars."""

    depth_points: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    relative_ap50: tuple[float, ...] = (30 / 85, 50 / 85, 70 / 85, 1.0)
    max_exits: int = 3  # intermediate exits recommended at most (the final layer is always an exit)
    min_gap_fraction: float = 0.25  # recommended exits are at least this fraction of the depth apart
    early_depth: float = 0.5  # an exit at or below this depth makes early exiting viable
    hierarchy_tolerance: float = 0.01
    min_final_ap50: float = 0.25  # below this the model itself does not detect: nothing to exit from

    def required(self, depth: float) -> float:
        """Fraction of the final AP50 required of an exit at ``depth`` (layer / number of layers)."""
        return float(np.interp(depth, self.depth_points, self.relative_ap50))


@dataclass(frozen=True)
class Decision:
    exits: tuple[int, ...]
    verdict: str
    rationale: tuple[str, ...]
    evidence: dict[int, dict] = field(default_factory=dict)
    criteria: Criteria = Criteria()

    def to_json(self) -> dict:
        return {
            "exits": list(self.exits),
            "verdict": self.verdict,
            "rationale": list(self.rationale),
            "evidence": {str(k): v for k, v in self.evidence.items()},
            "criteria": asdict(self.criteria),
        }


def load_results(folder: Path) -> dict[str, dict]:
    """Every ``result.json`` under ``folder`` (one level of subfolders), keyed by analyzer name."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob("*/result.json")):
        data = json.loads(path.read_text())
        found[data["analyzer"]] = data
    if not found:
        raise ValueError(f"{folder}: no analyzer results (expected {folder}/<name>/result.json)")
    return found


def _evidence(results: dict[str, dict]) -> dict[int, dict]:
    evidence: dict[int, dict] = {}
    for name in EXIT_READOUTS:
        for layer, metrics in results.get(name, {}).get("layers", {}).items():
            row = evidence.setdefault(int(layer), {})
            row[name] = metrics["AP50"]
    for layer, row in evidence.items():
        best = max(row, key=row.get)
        row["best_AP50"], row["best_readout"] = row[best], best
        dense = results.get("probe-dense", {}).get("layers", {}).get(str(layer))
        if dense:
            row["probe-dense"] = dense["AP50"]
    flops = results.get("flops", {}).get("layers", {})
    for layer, row in evidence.items():
        if str(layer) in flops:
            row["gflops_to_exit"] = flops[str(layer)]["gflops_to_exit"]
            row["fraction_of_full"] = flops[str(layer)]["fraction_of_full"]
    return evidence


def _supporting(results: dict[str, dict], layer: int) -> str:
    """Dense-probe, rollout, attribution and clustering numbers at ``layer``: cited, not used in the criteria
    (exits read detection tokens, so only det-token readouts decide)."""
    parts = []
    dense = results.get("probe-dense", {}).get("layers", {}).get(str(layer))
    if dense:
        parts.append(f"patch-token dense probe AP50 {dense['AP50']:.3f}")
    rollout = results.get("rollout", {}).get("layers", {}).get(str(layer))
    if rollout:
        parts.append(f"rollout in-box mass {rollout['inbox_mass']:.2f} (chance {rollout['chance_mass']:.2f})")
    attribution = results.get("attribution", {}).get("layers", {}).get(str(layer))
    if attribution:
        parts.append(
            f"IG attribution in-box {attribution['inbox_attribution']:.2f} (chance {attribution['chance_mass']:.2f})"
        )
    clustering = results.get("clustering", {}).get("layers", {}).get(str(layer), {})
    if "patch_knn_balanced_accuracy" in clustering:
        parts.append(f"patch person/background k-NN balanced accuracy {clustering['patch_knn_balanced_accuracy']:.2f}")
    return "; ".join(parts)


def _num_layers(results: dict[str, dict], evidence: dict[int, dict]) -> int:
    for data in results.values():
        profile = data.get("profile")
        if profile:
            return len(profile["blocks"])
    return max(evidence)


def decide(results: dict[str, dict], criteria: Criteria = Criteria()) -> Decision:
    """Recommend exits from analyzer results (as loaded by ``load_results``)."""
    evidence = _evidence(results)
    if not evidence:
        raise ValueError(f"decide: no det-token readout among the results (need one of {EXIT_READOUTS})")
    depth = _num_layers(results, evidence)
    if depth not in evidence:
        raise ValueError(f"decide: no readout at the final layer {depth}; analyze it too to have a reference")
    final = evidence[depth]["lens"] if "lens" in evidence[depth] else evidence[depth]["best_AP50"]
    rationale = [f"final layer {depth}: AP50 {final:.3f} (reference for every exit)"]
    if final < criteria.min_final_ap50:
        rationale.append(f"final AP50 {final:.3f} < {criteria.min_final_ap50:.2f}: the model itself does not detect")
    passing = []
    for layer in sorted(k for k in evidence if 0 < k < depth):
        row = evidence[layer]
        ratio = row["best_AP50"] / final if final > 0 else 0.0
        need = criteria.required(layer / depth)
        row.update({"relative_AP50": ratio, "required_relative_AP50": need, "passes": ratio >= need})
        cost = f"; {row['fraction_of_full']:.0%} of the full model's GFLOPs" if "fraction_of_full" in row else ""
        rationale.append(
            f"layer {layer}: best AP50 {row['best_AP50']:.3f} ({row['best_readout']}) = {ratio:.2f} of final, "
            f"bar {need:.2f} -> {'passes' if ratio >= need else 'fails'}{cost}"
        )
        if ratio >= need:
            passing.append(layer)
        support = _supporting(results, layer)
        if support:
            rationale.append(f"layer {layer} supporting evidence: {support}")
    exits: list[int] = []
    gap = max(1, int(round(criteria.min_gap_fraction * depth)))
    for layer in passing:
        if len(exits) < criteria.max_exits and (not exits or layer - exits[-1] >= gap) and depth - layer >= 1:
            exits.append(layer)
    chain = exits + [depth]
    scores = [evidence[k]["best_AP50"] if k != depth else final for k in chain]
    for (a, sa), (b, sb) in zip(zip(chain, scores), zip(chain[1:], scores[1:])):
        if sb + criteria.hierarchy_tolerance < sa:
            rationale.append(f"hierarchy violated: layer {b} AP50 {sb:.3f} < layer {a} AP50 {sa:.3f}")
    if not exits or final < criteria.min_final_ap50:
        exits, chain = [], [depth]
        verdict = VERDICTS[2]
    elif exits[0] / depth <= criteria.early_depth:
        verdict = VERDICTS[0]
    else:
        verdict = VERDICTS[1]
    rationale.append(f"verdict: {verdict}; exits {chain}")
    return Decision(tuple(chain), verdict, tuple(rationale), evidence, criteria)
