"""The models a team would deploy instead of exits, scored beside the exit designs on the same held-out images.

- **Lower resolution** (``resolution_baselines``): the reference design's own model with its processor's
  resize scaled by a fraction (shortest and longest edge), e.g. 3/4 and 1/2 of the study's input. YOLOS
  interpolates its position embeddings to any input size, so no retraining is involved.
- **Another model** (``model_baselines``): any YOLOS checkpoint (hub id, folder, or an embedded name such
  as ``shallow-reference``), e.g. a model with fewer blocks trained on its own.

Each is run once over the scored images, its final-layer detections scored with the same COCO evaluation
as the exits, its FLOPs counted at its own input size, and its latency measured in the design comparison's
one interleaved timing run (``pipeline.time_settings``), so every number sits beside the exits' own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probe_kit.data.sample import Sample
from probe_kit.metrics.coco import evaluate
from probe_kit.models.flops import measure_flops
from probe_kit.models.loading import ModelSpec, load_yolos, person_label_index
from probe_kit.models.predict import sample_detections
from probe_kit.models.runner import input_size, patch_pixels, run_batches

BATCH_SIZE = 8


@dataclass(frozen=True)
class Baseline:
    """One model run as a plain detector: ``name`` for people, ``describe`` for result.json."""

    name: str
    kind: str  # "resolution" or "model"
    model: torch.nn.Module
    processor: object
    describe: dict


def parse_fractions(text: str, option: str = "--baseline-resolutions") -> tuple[float, ...]:
    """``0.75,0.5`` -> (0.75, 0.5): fractions of the study's input size, each in (0, 1); refused in one line."""
    try:
        fractions = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        fractions = ()
    check_fractions(fractions, f"{option} {text!r}")
    return fractions


def check_fractions(fractions: Sequence[float], where: str) -> None:
    """Refuse, naming ``where``, fractions that are not distinct numbers in (0, 1) (or none at all)."""
    numbers = all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions)
    if not fractions or not numbers or not all(0 < f < 1 for f in fractions) or len(set(fractions)) != len(fractions):
        raise ValueError(f"{where}: expected distinct fractions of the input size in (0, 1), e.g. 0.75,0.5")


def resolution_baselines(
    model: torch.nn.Module, processor, model_name: str, fractions: Sequence[float]
) -> list[Baseline]:
    """``model`` with its processor's resize scaled by each fraction (the image's aspect kept as its processor
    keeps it); refused when the scaled input would be smaller than one patch."""
    if fractions:
        check_fractions(fractions, "baseline resolutions")
    size = processor.size
    if size.get("shortest_edge") is None:
        raise ValueError(
            f"--baseline-resolutions: the processor of {model_name} resizes to a fixed {size}; "
            "lower-resolution baselines need a shortest_edge resize"
        )
    patch = patch_pixels(model)
    out = []
    for fraction in fractions:
        shortest = round(size["shortest_edge"] * fraction)
        if shortest < patch:
            raise ValueError(
                f"--baseline-resolutions {fraction}: shortest edge {shortest} px is below one {patch}-px patch"
            )
        scaled = copy.deepcopy(processor)
        longest = size.get("longest_edge")
        longest = None if longest is None else round(longest * fraction)
        scaled.size = {"shortest_edge": shortest, "longest_edge": longest}
        out.append(
            Baseline(
                f"{model_name} at shortest edge {shortest} ({fraction:g}x)",
                "resolution",
                model,
                scaled,
                {"model": model_name, "fraction": fraction, "shortest_edge": shortest},
            )
        )
    return out


def model_baselines(names: Sequence[str], device: str) -> list[Baseline]:
    """Each named YOLOS checkpoint, loaded as ``--model`` loads one (its own processor and input size)."""
    out = []
    for name in names:
        model, processor = load_yolos(ModelSpec(name, device=device), "--baseline-model")
        blocks = model.config.num_hidden_layers
        out.append(Baseline(f"{name} ({blocks} blocks)", "model", model, processor, {"model": name, "blocks": blocks}))
    return out


def score_baseline(baseline: Baseline, samples: Sequence[Sample], gt: dict, progress: bool) -> dict:
    """``baseline`` over ``samples``: COCO AP/AP50 of its final-layer detections, and GFLOPs at its largest input."""
    from probe_kit.console import progress_bar

    person = person_label_index(baseline.model.config)
    detections: list[dict] = []
    with progress_bar(total=len(samples), desc=f"baseline {baseline.name}", unit="img", show=progress) as bar:
        for batch in run_batches(baseline.model, baseline.processor, samples, BATCH_SIZE):
            detections += sample_detections(batch.outputs.logits, batch.outputs.pred_boxes, batch.samples, person)
            bar.update(len(batch.samples))
    metrics = evaluate(gt, detections)
    size = max({input_size(baseline.processor, s) for s in samples}, key=lambda s: s[0] * s[1])
    return {
        "name": baseline.name,
        "kind": baseline.kind,
        **baseline.describe,
        "input_size": list(size),
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "gflops": measure_flops(baseline.model, size).full,
    }
