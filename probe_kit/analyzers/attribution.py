"""Integrated Gradients (captum) from a detection's person score at layer k back to the input pixels.

The detection is read at layer k through the lens (the model's final LayerNorm and heads on that
layer's det token), for final-layer detections matched to a ground-truth person. Needs the model
and the images, which the cache records. Metric per layer, as for rollout: the share of absolute
attribution inside the person's box (chance: the box's share of the image); plus the completeness
delta, sum(attributions) - (F(x) - F(baseline)), relative to |F(x) - F(baseline)|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.models.heads import DetectionHead
from probe_kit.models.layers import forward_to_layer
from probe_kit.models.record import load_recorded
from probe_kit.ops.matching import match_final_to_gt
from probe_kit.options import PositiveInt
from probe_kit.training.data import cache_record, options_json


@dataclass(frozen=True)
class AttributionOptions:
    images: PositiveInt = 6  # matched detections attributed per layer (one per image)
    steps: PositiveInt = 32  # integration steps
    internal_batch_size: PositiveInt = 16  # bounds memory: captum evaluates this many steps at a time
    device: str = "cpu"  # where the model runs; a run-time choice, not recorded in the result's options


def _load_pixels(cache: FeatureCache, image_ids: list[int], processor) -> dict[int, torch.Tensor]:
    wanted = set(image_ids)
    samples = [s for s in cache.load_dataset(wanted) if s.image_id in wanted]
    return {s.image_id: processor(images=[s.load_image()], return_tensors="pt")["pixel_values"] for s in samples}


@register(
    "attribution",
    "captum Integrated Gradients of a matched detection's score at layer k: mass inside its box",
    AttributionOptions,
    role="evidence",
    metrics={"inbox_attribution": "IG attribution in-box share"},
    chance="chance_mass",
)
def run_attribution(cache: FeatureCache, layers: tuple[int, ...], seed: int = 0, **options) -> AnalyzerResult:
    from captum.attr import IntegratedGradients

    opts = AttributionOptions(**options)
    model, processor = load_recorded(cache_record(cache), opts.device, str(cache.path))
    head = DetectionHead.from_model(model).eval()
    person = cache.person_index()
    samples = cache.samples()
    _, final_boxes = cache.final_outputs()
    chosen = []
    for i, sample in enumerate(samples):
        pairs = match_final_to_gt(final_boxes[i], sample)
        if pairs:
            chosen.append((i, *pairs[0]))
        if len(chosen) == opts.images:
            break
    if not chosen:
        raise ValueError(f"{cache.path}: no final-layer detection matches a ground-truth person (IoU >= 0.5)")
    pixels = _load_pixels(cache, [samples[i].image_id for i, _, _ in chosen], processor)
    n_det = model.config.num_detection_tokens
    per_layer = {}
    for layer in (k for k in layers if k > 0):
        inside, deltas, chance = [], [], []
        for i, token, g in chosen:
            sample = samples[i]
            x = pixels[sample.image_id].to(device=model.device, dtype=model.dtype)

            def score(batch: torch.Tensor, token=token, layer=layer) -> torch.Tensor:
                logits, _ = head(forward_to_layer(model, batch, layer)[:, -n_det:])
                return logits.softmax(-1)[:, token, person]

            baseline = torch.zeros_like(x)  # the dataset mean colour, after the processor's normalisation
            attributions, delta = IntegratedGradients(score).attribute(
                x,
                baselines=baseline,
                n_steps=opts.steps,
                internal_batch_size=opts.internal_batch_size,
                return_convergence_delta=True,
            )
            with torch.no_grad():
                gap = float((score(x) - score(baseline)).abs())
            heat = attributions[0].abs().sum(0).detach().float().cpu().numpy()  # [H, W] of the processed image
            sy, sx = heat.shape[0] / sample.height, heat.shape[1] / sample.width
            bx, by, bw, bh = sample.boxes[g]
            box = np.zeros_like(heat, dtype=bool)
            box[int(by * sy) : int(np.ceil((by + bh) * sy)), int(bx * sx) : int(np.ceil((bx + bw) * sx))] = True
            inside.append(float(heat[box].sum() / max(heat.sum(), 1e-12)))
            chance.append(float(box.mean()))
            deltas.append(float(delta.abs()) / max(gap, 1e-12))
        per_layer[layer] = {
            "inbox_attribution": float(np.mean(inside)),
            "chance_mass": float(np.mean(chance)),
            "relative_completeness_delta": float(np.mean(deltas)),
            "detections": len(chosen),
        }
    return AnalyzerResult(
        "attribution",
        options_json(asdict(opts)),
        seed,
        per_layer,
        cache.fingerprint,
        extra={"method": "IntegratedGradients", "baseline": "zeros (normalised mean colour)"},
    )
