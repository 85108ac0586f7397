"""Attention rollout as a number per layer: do a layer's detection tokens attend to their objects?

Needs a cache made with ``--attention``. Each final-layer detection matched to a ground-truth
person (Hungarian on IoU, IoU >= 0.5) is followed back through the layers: per layer, the share of
its rollout mass over the patches whose centres lie inside that person's box, and a pointing-game
hit (is its arg-max patch inside the box). The same for the raw, head-fused attention row, and the
share of patches inside the box (what a uniform map would score).
"""

from __future__ import annotations

import numpy as np

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.ops.matching import MATCH_IOU, match_final_to_gt, patches_inside
from probe_kit.ops.rollout import attention_rollout, rollout_layers

__all__ = ["attention_rollout", "rollout_layers", "run_rollout"]

OVERLAYS = 4
CHUNK = 256  # images whose attention maps are read at once


def _image_paths(cache: FeatureCache) -> dict[int, str]:
    """Image files by id, re-read from the dataset the cache records (for the report's overlays)."""
    try:
        return {s.image_id: str(s.path) for s in cache.load_dataset() if s.path is not None}
    except (ValueError, TypeError, OSError):
        return {}


@register(
    "rollout",
    "share of each matched det token's rollout/attention mass inside its person's box, per layer",
    role="evidence",
    metrics={
        "attn_inbox_mass": "raw-attention in-box mass",
        "attn_pointing_game": "raw-attention pointing game",
        "inbox_mass": "rollout in-box mass",
        "pointing_game": "rollout pointing game",
    },
    chance="chance_mass",
)
def run_rollout(cache: FeatureCache, layers: tuple[int, ...], seed: int = 0) -> AnalyzerResult:
    if not cache.maps:
        raise ValueError(f"{cache.path}: no attention maps cached (re-cache with --attention)")
    layers = tuple(k for k in layers if k > 0)
    samples = cache.samples()
    _, final_boxes = cache.final_outputs()
    grid = (cache.layout.grid_h, cache.layout.grid_w)
    by_image: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # image -> (token, gt, patches in its box)
    for i, sample in enumerate(samples):
        for token, g in match_final_to_gt(final_boxes[i], sample):
            mask = patches_inside(sample.boxes[g], grid, sample.width, sample.height)
            by_image.setdefault(i, []).append((token, g, mask))
    options = {
        "head_fusion": cache.options["head_fusion"],
        "discard_ratio": cache.options["discard_ratio"],
        "match_iou": MATCH_IOU,
    }
    if not by_image:  # e.g. an untrained model: no attention evidence, said in the result instead of ending the study
        note = f"no final-layer detection matches a ground-truth person (IoU >= {MATCH_IOU}): no attention evidence"
        per_layer = {layer: {"matched_pairs": 0} for layer in layers}
        return AnalyzerResult("rollout", options, seed, per_layer, cache.fingerprint, extra={"note": note})
    images = np.array(sorted(by_image))
    chance = [float(mask.mean()) for i in images for _, _, mask in by_image[i]]
    per_layer = {}
    for layer in layers:
        metrics: dict[str, list[float]] = {}
        for name, prefix in (("rollout_det", ""), ("attn_det", "attn_")):
            inbox, hits = (
                metrics.setdefault(f"{prefix}inbox_mass", []),
                metrics.setdefault(f"{prefix}pointing_game", []),
            )
            for start in range(0, len(images), CHUNK):  # one read per chunk of images, not per image
                chunk = images[start : start + CHUNK]
                for maps, i in zip(cache.read(layer, name, chunk), chunk):
                    for token, _, mask in by_image[i]:
                        row = maps[token]
                        inbox.append(float(row[mask].sum() / max(row.sum(), 1e-12)))
                        hits.append(float(mask[int(row.argmax())]))
        per_layer[layer] = {m: float(np.mean(v)) for m, v in metrics.items()} | {
            "chance_mass": float(np.mean(chance)),
            "matched_pairs": len(chance),
        }
    shown = images[:OVERLAYS]
    first = [by_image[i][0] for i in shown]  # (token, gt, mask) of each shown image
    maps_by_layer = [cache.read(k, "rollout_det", shown) for k in layers]
    paths = _image_paths(cache)
    arrays = {
        "overlay_maps": np.stack(
            [np.stack([maps[j, t].reshape(grid) for maps in maps_by_layer]) for j, (t, _, _) in enumerate(first)]
        ),
        "overlay_boxes": np.stack([samples[i].boxes[g] for i, (_, g, _) in zip(shown, first)]),
        "overlay_paths": np.array([paths.get(samples[i].image_id, "") for i in shown]),
        "overlay_layers": np.array(layers),
    }
    return AnalyzerResult("rollout", options, seed, per_layer, cache.fingerprint, arrays=arrays)
