"""``evaluate-exits`` on one exits folder: static exits, one policy's sweep, the operating point, latency.

It runs the one evaluation pipeline (``heads/pipeline.py``) on one design and one policy: held-out
images, one recording pass (under torchrun each rank records its share; rank 0 scores and times),
the sweep scored from the records, then the full model, each static exit and the operating point (the
cheapest setting within ``tolerance`` AP of the full model) timed in interleaved rounds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from probe_kit import distributed
from probe_kit.data.spec import DataSpec
from probe_kit.heads.pipeline import (
    Design,
    HeldOut,
    Setting,
    Timing,
    by_difficulty,
    check_thresholds,
    fit_policies,
    held_out,
    held_out_line,
    largest_input,
    mean_gflops,
    score,
    settings,
    time_settings,
    timed_picks,
)
from probe_kit.io import write_json
from probe_kit.metrics.coco import ground_truth_dict
from probe_kit.models.timing import Latency, TimedRun, describe_speedup, speedup

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
RESULT_SCHEMA_VERSION = 2  # 2: schema_version added; exit costs from the head type (dense exits: their MLP)
FULL_MODEL_SOURCE = (
    "the last exit: the model's own head and blocks unless the exits folder trained the last head or fine-tuned blocks"
)
TIMING_METHOD = (
    "one timeit call per setting and round (torch.utils.benchmark clock, synchronised), settings interleaved in "
    "an order shuffled per round from a seed, batch 1"
)


def evaluate_exits(
    exits_dir: Path,
    data_spec: DataSpec,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    policy_kind: str = "confidence",
    tolerance: float = 0.01,
    progress: bool = True,
    device: str = "cpu",
    timing: Timing | None = None,
    detections_dir: Path | None = None,
    seed: int = 0,
) -> dict:
    """The ``result.json`` of ``probe-kit evaluate-exits`` (see the module docstring).

    ``detections_dir``: also write ``full.json`` and ``exit-<k>.json`` (COCO results format) there.
    """
    from probe_kit.heads.gate import TARGET_F1
    from probe_kit.heads.policy_registry import policy_spec

    policy_spec(policy_kind)  # an unknown name is refused before any work
    check_thresholds(thresholds)
    design = Design.load(exits_dir, device)
    kept = held_out(data_spec.load(), [design], data_spec)
    samples = kept.samples
    design.record(samples, largest_input(design, samples), progress, sharded=True)
    if not distributed.is_main():  # rank 0 alone scores and times (latency on one rank, the others idle)
        return distributed.broadcast_object(None)
    design.score_against(ground_truth_dict(samples))
    fitted = fit_policies(design, [policy_kind], seed, TARGET_F1, progress)
    every = settings(design, fitted, {policy_kind: tuple(thresholds)})
    static = {s: score(s, ("AP", "AP50", "AP75", "pr_curve_iou50")) for s in every if s.static}
    sweep = {s: score(s) for s in every if not s.static}
    full = static[every[len(static) - 1]]
    within = [s for s, row in sweep.items() if row["AP"] >= full["AP"] - tolerance]
    chosen = min(within, key=lambda s: sweep[s]["mean_gflops"]) if within else max(sweep, key=lambda s: sweep[s]["AP"])
    plans = {f"exit-{int(s.layers[0])}": s for s in static} | {"operating_point": chosen}
    timing = timing or Timing()
    run = time_settings(design, samples, plans, timing, progress)
    if detections_dir is not None:  # last, so a failed run leaves no files behind
        for s in static:
            name = "full" if s is every[len(static) - 1] else f"exit-{int(s.layers[0])}"
            write_json(Path(detections_dir) / f"{name}.json", design.records.detections(s.layers))
    context = _Context(design, samples, run, timing, tolerance, kept)
    result = _result(context, data_spec, policy_kind, static, sweep, chosen, bool(within))
    return distributed.broadcast_object(result)


class _Context:
    """What the result is assembled from besides the scored settings."""

    def __init__(self, design: Design, samples, run: TimedRun, timing: Timing, tolerance, kept: HeldOut):
        self.design, self.samples, self.run, self.latency = design, samples, run, run.latency
        self.timing, self.tolerance, self.kept = timing, tolerance, kept


def _result(c: _Context, data_spec: DataSpec, policy: str, static: dict, sweep: dict, chosen: Setting, within) -> dict:
    design, records, profile = c.design, c.design.records, c.design.profile
    picks = timed_picks(c.samples, c.timing)
    exits = {
        str(int(s.layers[0])): {**row, "flops_speedup": profile.full / row["mean_gflops"]} for s, row in static.items()
    }
    for layer, row in exits.items():
        row.pop("exit_histogram")
        row.update(_timed(c.latency, f"exit-{layer}"))
    full = exits[str(records.layers[-1])]
    rows = [
        {"threshold": s.threshold, **row, "flops_speedup": profile.full / row["mean_gflops"]}
        for s, row in sweep.items()
    ]
    point = next(r for s, r in zip(sweep, rows, strict=True) if s is chosen)
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "exits_dir": str(design.path.resolve()),
        "data": data_spec.describe(),
        "policy": policy,
        "scored_image_ids": list(records.image_ids),
        **c.kept.to_json(),
        "full_model": {
            **{k: full[k] for k in ("AP", "AP50")},
            "gflops": profile.full,
            "latency": c.latency["full"].to_json(),
            "source": FULL_MODEL_SOURCE,
        },
        "exits": exits,
        "hierarchy_ok": all(
            exits[str(b)]["AP50"] + c.tolerance >= exits[str(a)]["AP50"] for a, b in itertools.pairwise(records.layers)
        ),
        "sweep": rows,
        "operating_point": {
            **point,
            **_timed(c.latency, "operating_point"),
            "within_tolerance": within,
            "tolerance_AP": c.tolerance,
            "timed_images": len(picks),
            "timed_flops_speedup": profile.full / mean_gflops(chosen, chosen.layers[picks]),
        },
        "exit_distribution": by_difficulty(c.samples, chosen.layers),
        "timing": {
            **asdict(c.timing),
            "processes": distributed.world_size(),  # > 1: recorded by all, timed on rank 0 while the others waited
            "images": len(picks),
            "timed_image_ids": [records.image_ids[i] for i in picks],
            "device": str(next(design.model.parameters()).device),
            "method": TIMING_METHOD,
            **c.run.to_json(),
        },
        "flops": profile.to_json(),
    }


def _timed(latency: dict[str, Latency], name: str) -> dict:
    return {"latency": latency[name].to_json(), "measured_speedup": speedup(latency["full"], latency[name])}


def summary_lines(result: dict) -> list[str]:
    """What ``evaluate-exits`` and ``benchmarks/adaptive_latency.py`` print: AP, GFLOPs, latency, speed-ups."""

    def latency(row: dict) -> str:
        timed = row["latency"]
        return f"{timed['median_ms']:.2f} ms (IQR {timed['iqr_ms']:.2f}, {timed['repeats']} rounds)"

    full, point, timing = result["full_model"], result["operating_point"], result["timing"]
    lines = [
        (
            f"{held_out_line(result)}; latency on {timing['images']} of them, batch 1, {timing['threads']} thread(s), "
            f"{timing['device']}"
        ),
        f"full model: AP {full['AP']:.4f}  AP50 {full['AP50']:.4f}  {full['gflops']:.3f} GFLOPs  {latency(full)}",
    ]
    for layer, row in result["exits"].items():
        lines.append(
            f"exit {layer:>2}: AP {row['AP']:.4f}  AP50 {row['AP50']:.4f}  {row['mean_gflops']:.3f} GFLOPs  "
            f"{latency(row)}  speed-up: FLOPs {row['flops_speedup']:.2f}x, measured: "
            f"{describe_speedup(row['measured_speedup'])}"
        )
    for row in result["sweep"]:
        lines.append(
            f"{result['policy']} {row['threshold']:<6} AP {row['AP']:.4f}  AP50 {row['AP50']:.4f}  "
            f"{row['mean_gflops']:.3f} GFLOPs (FLOPs speed-up {row['flops_speedup']:.2f}x)  "
            f"exits {row['exit_histogram']}"
        )
    lines.append(
        f"operating point: threshold {point['threshold']}  AP {point['AP']:.4f} (within {point['tolerance_AP']} of the "
        f"full model: {point['within_tolerance']})  {latency(point)}  speed-up: FLOPs {point['flops_speedup']:.2f}x "
        f"(on the timed images {point['timed_flops_speedup']:.2f}x), "
        f"measured: {describe_speedup(point['measured_speedup'])}"
    )
    measured = point["measured_speedup"]
    if not (measured["measurable"] and measured["ratio"] > 1):
        lines.append("the operating point saves no measurable time over the full model")
    return lines
