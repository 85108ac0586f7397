"""Evaluating a multi-exit model: static exits, a policy-threshold sweep, the operating point.

Latency is wall-clock per image at batch 1 on the model's device, measured in the same run for
the full model and for every policy setting; GFLOPs per image count the blocks actually run plus
every exit head evaluated on the way (measured with FlopCounterMode).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from probe_kit.data.sample import Sample
from probe_kit.data.spec import DataSpec
from probe_kit.heads.store import load_exits
from probe_kit.heads.multi_exit import MultiExitYolos, Policy
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.models.flops import FlopProfile, measure_flops
from probe_kit.models.loading import person_label_index
from probe_kit.models.predict import detections_from_outputs
from probe_kit.models.runner import input_size

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def _gflops(profile: FlopProfile, exits: Sequence[int], layer: int, policy: Policy) -> float:
    """Blocks 1..layer plus every head evaluated on the way: one for a fixed exit, else each exit up to ``layer``."""
    heads = 1 if policy.kind == "fixed" else sum(1 for k in exits if k <= layer)
    return profile.to_exit(layer, head=0.0) + heads * profile.head


def _run(
    multi: MultiExitYolos,
    pixels: list[torch.Tensor],
    samples: Sequence[Sample],
    policy: Policy,
    profile: FlopProfile,
    person: int,
) -> dict:
    detections, layers, seconds = [], [], []
    for pixel, sample in zip(pixels, samples):
        start = time.perf_counter()
        out = multi(pixel, policy)
        seconds.append(time.perf_counter() - start)
        layers.append(int(out.exit_layer[0]))
        detections += detections_from_outputs(
            out.logits, out.pred_boxes, [sample.image_id], [(sample.width, sample.height)], person
        )
    metrics = evaluate(ground_truth_dict(samples), detections)
    exits = multi.heads.layers
    return {
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "pr_curve_iou50": metrics.get("pr_curve_iou50"),
        "mean_gflops": float(np.mean([_gflops(profile, exits, k, policy) for k in layers])),
        "mean_latency_ms": 1000 * float(np.mean(seconds)),
        "exit_layers": layers,
    }


def evaluate_exits(
    exits_dir: Path,
    data_spec: DataSpec,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    policy_kind: str = "confidence",
    tolerance: float = 0.01,
    progress: bool = True,
) -> dict:
    """The ``result.json`` of ``probe-kit evaluate-exits`` (see the module docstring)."""
    from tqdm import tqdm

    model, processor, heads, config = load_exits(exits_dir)
    person = person_label_index(model.config)
    multi = MultiExitYolos(model, heads, person).eval()
    samples = data_spec.load()
    sizes = {input_size(processor, s) for s in samples}
    profile = measure_flops(model, max(sizes, key=lambda s: s[0] * s[1]))
    pixels = [
        processor(images=[s.load_image()], return_tensors="pt")["pixel_values"]
        for s in tqdm(samples, desc="preprocess", unit="img", disable=not progress)
    ]
    with torch.no_grad():  # warm-up, so the first timed image does not pay for lazy initialisation
        multi(pixels[0], Policy("fixed", layer=heads.layers[-1]))

    settings = [("static", k) for k in heads.layers] + [(policy_kind, t) for t in thresholds]
    runs = {}
    for kind, value in tqdm(settings, desc="evaluate-exits", disable=not progress):
        policy = Policy("fixed", layer=value) if kind == "static" else Policy(kind, threshold=value)
        runs[(kind, value)] = _run(multi, pixels, samples, policy, profile, person)

    full = runs[("static", heads.layers[-1])]
    static = {str(k): {key: v for key, v in runs[("static", k)].items() if key != "exit_layers"} for k in heads.layers}
    hierarchy = all(
        static[str(b)]["AP50"] + tolerance >= static[str(a)]["AP50"] for a, b in zip(heads.layers, heads.layers[1:])
    )
    sweep = []
    for t in thresholds:
        run = runs[(policy_kind, t)]
        sweep.append(
            {
                "threshold": t,
                **{k: v for k, v in run.items() if k not in ("exit_layers", "pr_curve_iou50")},
                "exit_histogram": {str(k): c for k, c in sorted(Counter(run["exit_layers"]).items())},
            }
        )
    within = [s for s in sweep if s["AP"] >= full["AP"] - tolerance]
    chosen = min(within, key=lambda s: s["mean_gflops"]) if within else max(sweep, key=lambda s: s["AP"])
    chosen_layers = runs[(policy_kind, chosen["threshold"])]["exit_layers"]
    by_difficulty: dict[str, Counter] = {}
    for sample, layer in zip(samples, chosen_layers):
        by_difficulty.setdefault(sample.meta.get("difficulty", "all"), Counter())[layer] += 1
    return {
        "exits_dir": str(Path(exits_dir).resolve()),
        "data": data_spec.describe(),
        "policy": policy_kind,
        "full_model": {
            "AP": full["AP"],
            "AP50": full["AP50"],
            "gflops": profile.full,
            "mean_latency_ms": full["mean_latency_ms"],
        },
        "exits": static,
        "hierarchy_ok": hierarchy,
        "sweep": sweep,
        "operating_point": {
            "threshold": chosen["threshold"],
            "AP": chosen["AP"],
            "AP50": chosen["AP50"],
            "within_tolerance": bool(within),
            "tolerance_AP": tolerance,
            "mean_gflops": chosen["mean_gflops"],
            "flops_speedup": profile.full / chosen["mean_gflops"],
            "measured_speedup": full["mean_latency_ms"] / chosen["mean_latency_ms"],
        },
        "exit_distribution": {
            d: {str(k): c for k, c in sorted(cnt.items())} for d, cnt in sorted(by_difficulty.items())
        },
        "flops": profile.to_json(),
    }
