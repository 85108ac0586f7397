"""Dense patch probe: per-patch objectness + box on patch tokens, decoded with NMS, COCO mAP.

Tests whether spatial object information exists at layer L even where the det tokens have not
gathered it yet.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.ops.boxes import cxcywh_norm_to_xywh, xywh_to_cxcywh_norm
from probe_kit.ops.dense import DenseHead, dense_loss, dense_targets, nms
from probe_kit.options import Fraction, PositiveFloat, PositiveInt
from probe_kit.training.data import apply_in_chunks, headline, iter_batches, make_split, options_json
from probe_kit.training.fit import fit


def decode(pred: torch.Tensor, samples, iou_threshold: float = 0.5, keep: int = 100) -> list[dict]:
    """[n, P, 5] dense outputs -> COCO detections after NMS (score = sigmoid objectness)."""
    detections = []
    for p, sample in zip(pred, samples):
        scores = p[:, 0].sigmoid().numpy()
        boxes = cxcywh_norm_to_xywh(p[:, 1:].sigmoid(), sample.width, sample.height)
        corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        for i in nms(corners, scores, iou_threshold, keep):
            detections.append(
                {
                    "image_id": sample.image_id,
                    "category_id": 1,
                    "bbox": [round(float(v), 3) for v in boxes[i]],
                    "score": float(scores[i]),
                }
            )
    return detections


@register(
    "probe-dense",
    "per-patch objectness + box (linear or MLP) on patch tokens, NMS, COCO mAP",
    role="evidence",  # patch tokens, not det tokens: cited, not an exit readout
    metrics={"AP50": "patch-token dense probe AP50", "AP": "dense probe AP (0.5:0.95)"},
)
def run_dense(
    cache: FeatureCache,
    layers: tuple[int, ...],
    seed: int = 0,
    head: Literal["linear", "mlp"] = "mlp",
    val_fraction: Fraction = 0.3,
    val_sequences: tuple[str, ...] = (),
    epochs: PositiveInt = 30,
    lr: PositiveFloat = 1e-3,
    batch_size: PositiveInt = 32,
) -> AnalyzerResult:
    options = options_json(locals())
    samples = cache.samples()
    split = make_split(samples, val_fraction, val_sequences=val_sequences)
    grid = (cache.layout.grid_h, cache.layout.grid_w)
    norm_boxes = [xywh_to_cxcywh_norm(s.boxes, s.width, s.height).astype(np.float32) for s in samples]
    objectness, box_targets = dense_targets(norm_boxes, grid)
    dim = cache.read(layers[0], "patch", slice(0, 1)).shape[-1]
    per_layer, histories = {}, {}
    for layer in layers:
        torch.manual_seed(seed)
        module = DenseHead(dim, head)

        def batches(epoch, layer=layer):
            return iter_batches(
                cache, layer, "patch", split.train, batch_size, np.random.default_rng([seed, layer, epoch])
            )

        def loss_fn(m, batch):
            idx, feats = batch
            parts = dense_loss(m(feats), objectness[idx], box_targets[idx])
            return {"loss": parts.pop("loss_dense"), **parts}

        def holdout(m, layer=layer):
            pred = apply_in_chunks(m, cache, layer, "patch", split.holdout)
            return float(dense_loss(pred, objectness[split.holdout], box_targets[split.holdout])["loss_dense"])

        histories[str(layer)] = fit(module, batches, loss_fn, holdout, epochs, lr, desc=f"probe-dense L{layer}")
        val = [samples[i] for i in split.val]
        metrics = evaluate(
            ground_truth_dict(val), decode(apply_in_chunks(module, cache, layer, "patch", split.val), val)
        )
        per_layer[layer] = headline(metrics) | {"epochs_trained": len(histories[str(layer)])}
    return AnalyzerResult(
        "probe-dense",
        options,
        seed,
        per_layer,
        cache.fingerprint,
        extra={"split": split.describe(samples), "training": histories},
    )
