"""Turning analyzer results into a recommendation. Pure: same results, same decision.

Which result says what is read from each analyzer's registry metadata (``meta``: role and metrics),
never from its name: the per-layer evidence is the best COCO AP50 any ``readout`` reached there
(what an exit head reading that layer's detection tokens can be expected to achieve); ``evidence``
analyzers are cited beside it; ``cost`` gives GFLOPs to each exit. Each layer is held to a bar:
by default the original study's minimum bars relative to the final layer (AP50 30/50/70/85% at
layers 3/6/9/12, i.e. exits at 25/50/75% depth need 30/85, 50/85 and 70/85 of the final AP50,
linear in between); the user's own bars (``Criteria.bars``, absolute AP50 per layer) replace them.
Later exits must not be worse than earlier ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERDICTS = ("early exits viable", "only late exits viable", "not viable")
Roles = Mapping[str, Mapping[str, Any]]  # analyzer name -> registry meta {"role", "metrics", "chance"}


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
    # the user's bars: (layer, minimum AP50) pairs, absolute, sorted by layer; linear in between and held
    # flat beyond the ends. Empty: the relative default above.
    bars: tuple[tuple[int, float], ...] = ()
    # exit designs (``decide --designs``): the AP50 the user accepts to lose for speed, absolute (0.01 = 1 point)
    max_ap50_loss: float = 0.01
    # a design pays only when its measured speed-up's 95% interval lies above this (decision/design.py)
    min_speedup: float = 1.10

    def required(self, depth: float) -> float:
        """Fraction of the final AP50 required of an exit at ``depth`` (layer / number of layers), by default."""
        return float(np.interp(depth, self.depth_points, self.relative_ap50))

    def bar(self, layer: int, num_layers: int, final_ap50: float) -> float:
        """Minimum AP50 an exit at ``layer`` must reach."""
        if self.bars:
            return float(np.interp(layer, [k for k, _ in self.bars], [v for _, v in self.bars]))
        return final_ap50 * self.required(layer / num_layers)


def parse_bars(text: str, option: str = "--bars") -> tuple[tuple[int, float], ...]:
    """``3:0.30,6:0.50,9:0.70`` (or the path of a YAML/JSON mapping ``{3: 0.30, ...}``) -> sorted pairs."""
    path = Path(text)
    if ":" not in text or path.is_file():
        if not path.is_file():
            raise ValueError(f"{option} {text!r}: expected LAYER:AP50 pairs like 3:0.30,6:0.50 or a file of them")
        from probe_kit.io import read_yaml

        raw = read_yaml(path, f"{option} YAML/JSON")
        if not isinstance(raw, dict):
            raise ValueError(f"{option} {path}: expected a mapping of layer to minimum AP50, like {{3: 0.30}}")
        return check_bars(raw, f"{option} {path}")
    pairs: dict[Any, Any] = {}
    for item in text.split(","):
        layer, sep, value = item.strip().partition(":")
        if not sep:
            raise ValueError(f"{option} {text!r}: {item.strip()!r} is not LAYER:AP50 (e.g. 6:0.50)")
        try:
            pairs[int(layer)] = float(value)
        except ValueError:
            raise ValueError(f"{option} {text!r}: {item.strip()!r} is not LAYER:AP50 (e.g. 6:0.50)") from None
    return check_bars(pairs, option)


def check_bars(raw: Mapping[Any, Any], where: str) -> tuple[tuple[int, float], ...]:
    """Validated ``{layer: minimum AP50}`` -> sorted pairs; errors name ``where``."""
    if not raw:
        raise ValueError(f"{where}: no bars given")
    bars = []
    for layer, value in raw.items():
        if isinstance(layer, bool) or not isinstance(layer, int) and not str(layer).isdigit():
            raise ValueError(f"{where}: layer {layer!r} is not a block index (1, 2, ...)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{where}: bar {value!r} at layer {layer} is not an AP50 between 0 and 1")
        if int(layer) < 1:
            raise ValueError(f"{where}: layer {layer} is not a block index (1, 2, ...)")
        bars.append((int(layer), float(value)))
    return tuple(sorted(bars))


_SETTABLE = (
    "bars",
    "max_exits",
    "min_gap_fraction",
    "early_depth",
    "hierarchy_tolerance",
    "min_final_ap50",
    "max_ap50_loss",
    "min_speedup",
)


def criteria_from(raw: Mapping[str, Any] | None, where: str = "decision") -> Criteria:
    """Criteria from a mapping (the YAML ``decision:`` key): ``bars`` as text or ``{layer: AP50}``, and the
    scalar fields of ``Criteria``; errors name ``where.key``."""
    if not raw:
        return Criteria()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping with keys from {list(_SETTABLE)}")  # noqa: TRY004 - user input
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SETTABLE:
            raise ValueError(f"{where}.{key}: unknown key; expected one of {list(_SETTABLE)}")
        if key == "bars":
            values[key] = (
                parse_bars(value, f"{where}.bars") if isinstance(value, str) else check_bars(value, f"{where}.bars")
            )
            continue
        kind = int if key == "max_exits" else float
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
            raise ValueError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where}.{key}: expected a finite number, got {value!r}")
        if value < 0 or (key in ("max_exits", "min_speedup") and value < 1):
            least = "a positive" if key == "max_exits" else "at least 1:" if key == "min_speedup" else "a non-negative"
            raise ValueError(f"{where}.{key}: expected {least} number, got {value!r}")
        values[key] = kind(value)
    return Criteria(**values)


@dataclass(frozen=True)
class Decision:
    exits: tuple[int, ...]
    verdict: str
    rationale: tuple[str, ...]
    evidence: dict[int, dict] = field(default_factory=dict)
    criteria: Criteria = Criteria()
    summary: str = ""  # the verdict in one sentence

    def to_json(self) -> dict:
        return {
            "exits": list(self.exits),
            "verdict": self.verdict,
            "summary": self.summary,
            "rationale": list(self.rationale),
            "evidence": {str(k): v for k, v in self.evidence.items()},
            "criteria": asdict(self.criteria),
        }


def load_results(folder: Path) -> dict[str, dict]:
    """Every ``result.json`` under ``folder`` (one level of subfolders), keyed by analyzer name."""
    from probe_kit.io import read_result

    folder = Path(folder)
    found, caches = {}, {}
    for path in sorted(folder.glob("*/result.json")):
        data = read_result(path)  # refused in one line naming the file: not JSON, no ``analyzer``
        found[data["analyzer"]] = data
        if data.get("cache_fingerprint"):
            caches.setdefault(data["cache_fingerprint"], path)
    if not found:
        raise ValueError(f"{folder}: no analyzer results (expected {folder}/<name>/result.json)")
    if len(caches) > 1:
        (a, first), (b, second) = list(caches.items())[:2]
        raise ValueError(
            f"{folder}: results from different caches cannot be weighed together: {first} measured cache {a}, "
            f"{second} cache {b}; rerun the analyzers on one cache"
        )
    return found


def role_of(name: str, result: Mapping[str, Any], roles: Roles | None = None) -> dict[str, Any]:
    """An analyzer's meta: from ``roles`` (the registry) where given, else as recorded in its result."""
    meta = (roles or {}).get(name) or result.get("meta") or {}
    return {
        "role": meta.get("role"),
        "metrics": [tuple(m) for m in meta.get("metrics", [])],
        "chance": meta.get("chance"),
        "reference": bool(meta.get("reference")),
    }


def by_role(results: Mapping[str, dict], role: str, roles: Roles | None = None) -> dict[str, dict]:
    """The results whose analyzer has ``role``, by name (sorted)."""
    return {n: r for n, r in sorted(results.items()) if role_of(n, r, roles)["role"] == role}


def _evidence(results: Mapping[str, dict], roles: Roles | None) -> dict[int, dict]:
    evidence: dict[int, dict] = {}
    for name, result in by_role(results, "readout", roles).items():
        for layer, metrics in result.get("layers", {}).items():
            if metrics.get("AP50") is not None:
                evidence.setdefault(int(layer), {})[name] = metrics["AP50"]
    for row in evidence.values():
        best = max(row, key=row.get)
        row["best_AP50"], row["best_readout"] = row[best], best
    for name, result in by_role(results, "readout", roles).items():
        if role_of(name, result, roles)["reference"]:
            for layer, metrics in result.get("layers", {}).items():
                if metrics.get("AP50") is not None:
                    evidence[int(layer)]["reference_AP50"] = metrics["AP50"]
    for result in by_role(results, "cost", roles).values():
        for layer, row in evidence.items():
            cost = result.get("layers", {}).get(str(layer), {})
            for key in ("gflops_to_exit", "fraction_of_full"):
                if key in cost:
                    row[key] = cost[key]
    return evidence


def supporting(results: Mapping[str, dict], layer: int, roles: Roles | None = None) -> list[str]:
    """The ``evidence`` analyzers' numbers at ``layer``, labelled (with chance where known): cited, not used in
    the criteria (exits read detection tokens, so only det-token readouts decide)."""
    parts = []
    for name, result in by_role(results, "evidence", roles).items():
        meta = role_of(name, result, roles)
        metrics = result.get("layers", {}).get(str(layer), {})
        cited = [
            f"{label} {metrics[k]:.3f}" for k, label in meta["metrics"] if isinstance(metrics.get(k), (int, float))
        ]
        chance = metrics.get(meta["chance"]) if meta["chance"] else None
        if cited:
            parts.append(", ".join(cited) + (f" (chance {chance:.3f})" if chance is not None else ""))
    return parts


def _num_layers(results: Mapping[str, dict], evidence: dict[int, dict]) -> int:
    for data in results.values():
        profile = data.get("profile")
        if profile:
            return len(profile["blocks"])
    return max(evidence)


def _summary(verdict: str, exits: list[int], depth: int, final: float, criteria: Criteria, ev: dict) -> str:
    if final < criteria.min_final_ap50:
        return (
            f"Early exit is not viable for this model on this data: the final layer {depth} itself reaches only "
            f"AP50 {final:.3f} (below {criteria.min_final_ap50:.2f}), so there is nothing to exit from"
        )
    if not exits:
        return f"Early exit is not viable for this model on this data: no layer before {depth} reaches its bar"
    first = ev[exits[0]]
    return (
        f"{verdict[0].upper()}{verdict[1:]}: exit{'s' if len(exits) > 1 else ''} at layer"
        f"{'s' if len(exits) > 1 else ''} {', '.join(map(str, exits))} reach{'' if len(exits) > 1 else 'es'} "
        f"{'their bars' if len(exits) > 1 else 'its bar'}; the earliest, layer {exits[0]}, reads AP50 "
        f"{first['best_AP50']:.3f} ({first['best_readout']}) = {first['relative_AP50']:.0%} of the final layer's"
    )


def decide(results: Mapping[str, dict], criteria: Criteria = Criteria(), roles: Roles | None = None) -> Decision:
    """Recommend exits from analyzer results (as loaded by ``load_results``); ``roles`` (the registry's
    ``analyzer_meta()``) overrides the metadata recorded in the results."""
    evidence = _evidence(results, roles)
    if not evidence:
        raise ValueError("decide: no readout among the results (no analyzer registered with role='readout')")
    depth = _num_layers(results, evidence)
    if depth not in evidence:
        raise ValueError(f"decide: no readout at the final layer {depth}; analyze it too to have a reference")
    beyond = [k for k, _ in criteria.bars if k > depth]
    if beyond:
        raise ValueError(f"bars: layer {beyond[0]} is beyond the model's {depth} layers")
    final = evidence[depth].get("reference_AP50", evidence[depth]["best_AP50"])  # the model's own, where read
    rationale = [f"final layer {depth}: AP50 {final:.3f} (reference for every exit)"]
    if final < criteria.min_final_ap50:
        rationale.append(f"final AP50 {final:.3f} < {criteria.min_final_ap50:.2f}: the model itself does not detect")
    detects = final >= criteria.min_final_ap50  # else no layer passes: there is nothing to exit from
    passing = []
    for layer in sorted(k for k in evidence if 0 < k < depth):
        row = evidence[layer]
        bar = criteria.bar(layer, depth, final)
        ratio = row["best_AP50"] / final if final > 0 else 0.0
        passes = detects and row["best_AP50"] >= bar
        row.update(
            {
                "relative_AP50": ratio,
                "bar_AP50": bar,
                "required_relative_AP50": bar / final if final > 0 else None,
                "passes": passes,
            }
        )
        cost = f"; {row['fraction_of_full']:.0%} of the full model's GFLOPs" if "fraction_of_full" in row else ""
        rationale.append(
            f"layer {layer}: best AP50 {row['best_AP50']:.3f} ({row['best_readout']}) = {ratio:.0%} of final, "
            f"bar AP50 {bar:.3f} ({bar / final if final > 0 else 0:.0%} of final) -> "
            f"{'passes' if passes else 'fails' if detects else 'fails (the final layer does not detect)'}{cost}"
        )
        if passes:
            passing.append(layer)
        support = supporting(results, layer, roles)
        if support:
            rationale.append(f"layer {layer} supporting evidence: {'; '.join(support)}")
    exits: list[int] = []
    gap = max(1, round(criteria.min_gap_fraction * depth))
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
    summary = _summary(verdict, exits, depth, final, criteria, evidence)
    return Decision(tuple(chain), verdict, tuple(rationale), evidence, criteria, summary)
