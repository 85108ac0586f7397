"""Evaluating a multi-exit model on held-out images: static exits, a policy sweep, the operating point.

1. **Held out.** Only images that trained nothing are scored: those in the exits folder's
   ``train_image_ids`` / ``holdout_image_ids`` are dropped (and counted); all of them -> refused.
2. **One pass.** Every exit runs once per image (``record_exits``, images streamed); each policy
   setting's exit layers, detections, AP and GFLOPs are computed from those records
   (``heads/policies.py``), and AP of a per-image mix of exits comes from one COCO evaluation per
   exit (``metrics/per_image.py``).
3. **Latency** of the full model, each static exit and the operating point on a fixed subset of
   scored images, timed in interleaved rounds (``models/timing.py``). The operating point runs live
   in ``MultiExitYolos`` when its policy is an online rule (the rule's own cost included), else it
   replays each image's recorded exit (``Policy("replay")``: every head up to it runs).

GFLOPs per image count the blocks actually run plus every exit head evaluated on the way (one head
for a static exit), measured with FlopCounterMode at the largest input size.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from probe_kit import distributed
from probe_kit.data.sample import Sample
from probe_kit.data.spec import DataSpec
from probe_kit.heads.multi_exit import MultiExitYolos, Policy
from probe_kit.heads.policies import POLICIES, RULES, static_exit
from probe_kit.heads.records import record_exits_sharded
from probe_kit.heads.store import load_exits
from probe_kit.io import write_json
from probe_kit.metrics.coco import ground_truth_dict
from probe_kit.metrics.per_image import PerImageChoice
from probe_kit.models.flops import FlopProfile, measure_flops
from probe_kit.models.loading import person_label_index
from probe_kit.models.runner import input_size
from probe_kit.models.timing import Latency, describe_speedup, interleaved_latency, speedup

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass(frozen=True)
class Timing:
    """How latency is measured: ``images`` scored images (evenly spaced), ``repeats`` interleaved rounds.

    A static exit's compute does not depend on the image (one input size), so a few images time it;
    the operating point's exits do, so its FLOPs over exactly the timed images are reported next to it.
    """

    images: int = 4
    repeats: int = 11
    warmup: int = 1
    threads: int = 1


def check_thresholds(thresholds: Sequence[float], name: str = "thresholds") -> None:
    """Policy thresholds are probabilities, IoUs or F1 cuts: finite numbers in [0, 1] (``nan`` fails both bounds)."""
    numbers = isinstance(thresholds, (list, tuple)) and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds
    )
    if not numbers or not thresholds:
        raise ValueError(f"{name}: expected a list of numbers in [0, 1], got {str(thresholds)[:60]}")


def held_out(samples: Sequence[Sample], config: dict, folder: Path, data_spec: DataSpec) -> tuple[list[Sample], int]:
    """``(samples that trained nothing, how many were dropped)``; refuses when none is left."""
    if "train_image_ids" not in config or "holdout_image_ids" not in config:
        raise ValueError(
            f"{folder}/config.json: no train_image_ids/holdout_image_ids, so held-out images cannot be told "
            "apart; retrain the heads with probe-kit train-exits"
        )
    trained = set(config["train_image_ids"]) | set(config["holdout_image_ids"])
    kept = [s for s in samples if s.image_id not in trained]
    if not kept:
        split = config.get("split", {})
        hint = (
            f"--sequences {','.join(split['val_groups'])}"
            if split.get("unit") == "sequence" and split.get("val_groups")
            else "other --sequences or --split second-half (overlapping images are dropped)"
        )
        raise ValueError(
            f"--data {data_spec.text()}: all {len(samples)} images trained or early-stopped the heads in {folder}; "
            f"pass held-out data, e.g. {hint}"
        )
    return kept, len(samples) - len(kept)


def _gflops(profile: FlopProfile, exits: Sequence[int], layers: torch.Tensor, static: bool) -> float:
    """Mean over images of blocks 1..layer plus the heads evaluated: one (static), else each exit up to it."""
    per_image = [
        profile.to_exit(k, head=0.0) + (1 if static else sum(1 for e in exits if e <= k)) * profile.head
        for k in layers.tolist()
    ]
    return float(np.mean(per_image))


def _timed_settings(multi, model, pixels: list[torch.Tensor], plans: dict[str, list[Policy]]) -> dict:
    """A callable per setting that runs the timing images: ``full`` (the unmodified model), else a policy per image."""

    def run(policies: list[Policy] | None):
        def go() -> None:
            with torch.no_grad():
                for i, p in enumerate(pixels):
                    model(pixel_values=p) if policies is None else multi(p, policies[i])

        return go

    return {"full": run(None), **{name: run(policies) for name, policies in plans.items()}}


def evaluate_exits(
    exits_dir: Path,
    data_spec: DataSpec,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    policy_kind: str = "confidence",
    tolerance: float = 0.01,
    progress: bool = True,
    device: str = "cpu",
    timing: Timing = Timing(),
    detections_dir: Path | None = None,
) -> dict:
    """The ``result.json`` of ``probe-kit evaluate-exits`` (see the module docstring).

    ``detections_dir``: also write ``full.json`` and ``exit-<k>.json`` (COCO results format) there.
    """
    if policy_kind not in POLICIES:
        raise ValueError(f"--policy {policy_kind!r}: expected one of {sorted(POLICIES)}")
    check_thresholds(thresholds)
    model, processor, heads, config = load_exits(exits_dir, device=device)
    multi = MultiExitYolos(model, heads, person_label_index(model.config)).eval()
    samples, dropped = held_out(data_spec.load(), config, Path(exits_dir), data_spec)
    profile = measure_flops(model, max({input_size(processor, s) for s in samples}, key=lambda s: s[0] * s[1]))
    records = record_exits_sharded(multi, processor, samples, progress)  # under torchrun: each rank its share
    if not distributed.is_main():  # rank 0 alone scores and times (latency on one rank, the others idle)
        return distributed.broadcast_object(None)
    exits = records.layers
    gt = ground_truth_dict(samples)

    static_detections = {k: records.detections(static_exit(records, k)) for k in exits}
    chooser = PerImageChoice(gt, static_detections)  # one COCO evaluation per exit serves every setting
    static = {}
    for k in exits:
        gflops = _gflops(profile, exits, static_exit(records, k), static=True)
        static[str(k)] = {
            **_metrics(chooser, records, static_exit(records, k), ("AP", "AP50", "AP75", "pr_curve_iou50")),
            "mean_gflops": gflops,
            "flops_speedup": profile.full / gflops,
        }
    full = static[str(exits[-1])]

    sweep_layers = {t: POLICIES[policy_kind](records, t) for t in thresholds}
    sweep = []
    for t, layers in sweep_layers.items():
        gflops = _gflops(profile, exits, layers, static=False)
        sweep.append(
            {
                "threshold": t,
                **_metrics(chooser, records, layers, ("AP", "AP50", "AP75")),
                "mean_gflops": gflops,
                "flops_speedup": profile.full / gflops,
                "exit_histogram": {str(k): c for k, c in sorted(Counter(layers.tolist()).items())},
            }
        )
    within = [s for s in sweep if s["AP"] >= full["AP"] - tolerance]
    chosen = min(within, key=lambda s: s["mean_gflops"]) if within else max(sweep, key=lambda s: s["AP"])
    chosen_layers = sweep_layers[chosen["threshold"]]

    picks = np.unique(np.linspace(0, len(samples) - 1, min(timing.images, len(samples))).round().astype(int))
    pixels = [processor(images=[samples[i].load_image()], return_tensors="pt")["pixel_values"] for i in picks]
    pixels = [p.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype) for p in pixels]
    plans = {f"exit-{k}": [Policy("fixed", layer=k)] * len(picks) for k in exits}
    # an online rule runs live (its own cost included; same exits as recorded, tested); others replay their exits
    plans["operating_point"] = (
        [Policy(policy_kind, threshold=chosen["threshold"])] * len(picks)
        if policy_kind in RULES
        else [Policy("replay", layer=k) for k in chosen_layers[picks].tolist()]
    )
    latency = interleaved_latency(
        _timed_settings(multi, model, pixels, plans),
        len(picks),
        timing.repeats,
        timing.warmup,
        timing.threads,
        progress,
    )
    for k in exits:
        static[str(k)].update(_timed(latency, f"exit-{k}"))
    chosen.update(_timed(latency, "operating_point"))
    if detections_dir is not None:  # last, so a failed run leaves no files behind
        write_json(Path(detections_dir) / "full.json", static_detections[exits[-1]])
        for k in exits[:-1]:
            write_json(Path(detections_dir) / f"exit-{k}.json", static_detections[k])
    result = {
        "exits_dir": str(Path(exits_dir).resolve()),
        "data": data_spec.describe(),
        "policy": policy_kind,
        "scored_image_ids": list(records.image_ids),
        "dropped_training_images": dropped,
        "full_model": {
            "AP": full["AP"],
            "AP50": full["AP50"],
            "gflops": profile.full,
            "latency": latency["full"].to_json(),
            "source": "the last exit: the model's own head and blocks unless the exits folder trained the last "
            "head or fine-tuned blocks",
        },
        "exits": static,
        "hierarchy_ok": all(
            static[str(b)]["AP50"] + tolerance >= static[str(a)]["AP50"] for a, b in itertools.pairwise(exits)
        ),
        "sweep": sweep,
        "operating_point": {
            **chosen,
            "within_tolerance": bool(within),
            "tolerance_AP": tolerance,
            "timed_images": len(picks),
            "timed_flops_speedup": profile.full / _gflops(profile, exits, chosen_layers[picks], static=False),
        },
        "exit_distribution": _by_difficulty(samples, chosen_layers),
        "timing": {
            **asdict(timing),
            "processes": distributed.world_size(),  # > 1: recorded by all, timed on rank 0 while the others waited
            "images": len(picks),
            "timed_image_ids": [records.image_ids[i] for i in picks],
            "device": str(next(model.parameters()).device),
            "method": "one timeit call per setting and round (torch.utils.benchmark clock, synchronised), settings "
            "interleaved in rotated order, batch 1",
        },
        "flops": profile.to_json(),
    }
    return distributed.broadcast_object(result)


def summary_lines(result: dict) -> list[str]:
    """What ``evaluate-exits`` and ``benchmarks/adaptive_latency.py`` print: AP, GFLOPs, latency, speed-ups."""

    def latency(row: dict) -> str:
        timed = row["latency"]
        return f"{timed['median_ms']:.2f} ms (IQR {timed['iqr_ms']:.2f}, {timed['repeats']} rounds)"

    full, point, timing = result["full_model"], result["operating_point"], result["timing"]
    lines = [
        (
            f"scored {len(result['scored_image_ids'])} held-out images ({result['dropped_training_images']} training "
            f"images dropped); latency on {timing['images']} of them, batch 1, {timing['threads']} thread(s), "
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


def _metrics(chooser: PerImageChoice, records, layers: torch.Tensor, keys: tuple[str, ...]) -> dict:
    """COCO metrics ``keys`` of every image at its exit ``layers`` [I]."""
    metrics = chooser.score(dict(zip(records.image_ids, layers.tolist())))
    return {k: metrics[k] for k in keys}


def _timed(latency: dict[str, Latency], name: str) -> dict:
    return {"latency": latency[name].to_json(), "measured_speedup": speedup(latency["full"], latency[name])}


def _by_difficulty(samples: Sequence[Sample], layers: torch.Tensor) -> dict:
    counts: dict[str, Counter] = {}
    for sample, layer in zip(samples, layers.tolist()):
        counts.setdefault(sample.meta.get("difficulty", "all"), Counter())[layer] += 1
    return {d: {str(k): c for k, c in sorted(cnt.items())} for d, cnt in sorted(counts.items())}
