"""Detection lens and tuned lens: read each layer's det tokens through the model's own head.

Lens: the final LayerNorm (its statistics recomputed on each layer's tokens) and the pretrained
class and box heads, applied to layer k's detection tokens. At the last layer this *is* the model.
Tuned lens (Belrose et al. 2023): one affine translator per layer, ``h + A h + b``, zero-initialised
so it starts equal to the lens, trained by distillation towards the final layer's outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.models.heads import DetectionHead
from probe_kit.ops.boxes import paired_iou
from probe_kit.ops.distill import distillation_loss, kl_to_final
from probe_kit.options import Fraction, PositiveFloat, PositiveInt
from probe_kit.training.data import (
    Split,
    apply_in_chunks,
    headline,
    iter_batches,
    load_cache_model,
    make_split,
    options_json,
    score,
)
from probe_kit.training.fit import fit

CONFIDENT = 0.5  # final-layer person score above which a token counts as a detection for box agreement


def agreement(
    logits: torch.Tensor, boxes: torch.Tensor, final_logits: torch.Tensor, final_boxes: torch.Tensor, person: int
) -> dict:
    """KL(final || layer) of class distributions, and same-token box IoU where the final layer detects."""
    kl = kl_to_final(final_logits, logits)
    confident = final_logits.softmax(-1)[..., person] >= CONFIDENT
    iou = paired_iou(boxes, final_boxes)[confident]
    return {
        "kl_to_final": float(kl),
        "box_iou_to_final": float(iou.mean()) if iou.numel() else None,
        "confident_tokens": int(confident.sum()),
    }


def _setup(cache: FeatureCache, val_fraction: float, val_sequences):
    samples = cache.samples()
    split = make_split(samples, val_fraction, val_sequences=val_sequences)
    logits, boxes = cache.final_outputs()
    return samples, split, torch.from_numpy(logits), torch.from_numpy(boxes)


def _layer_metrics(head, cache, layer, split: Split, samples, final_logits, final_boxes, person) -> dict:
    logits, boxes = apply_in_chunks(head, cache, layer, "det", split.val)
    metrics = headline(score(logits, boxes, [samples[i] for i in split.val], person))
    return metrics | agreement(logits, boxes, final_logits[split.val], final_boxes[split.val], person)


@register(
    "lens",
    "model's final LayerNorm + pretrained heads on each layer's det tokens (no training), COCO mAP",
    role="readout",
    metrics={"AP50": "lens AP50", "AP": "lens AP (0.5:0.95)", "kl_to_final": "lens KL to final layer"},
    reference=True,  # the model's own head: at the final layer it reads exactly the model's output
)
def run_lens(
    cache: FeatureCache,
    layers: tuple[int, ...],
    seed: int = 0,
    val_fraction: Fraction = 0.3,
    val_sequences: tuple[str, ...] = (),
) -> AnalyzerResult:
    samples, split, final_logits, final_boxes = _setup(cache, val_fraction, val_sequences)
    head = DetectionHead.from_model(load_cache_model(cache)).eval()
    person = cache.person_index()
    per_layer = {
        layer: _layer_metrics(head, cache, layer, split, samples, final_logits, final_boxes, person) for layer in layers
    }
    return AnalyzerResult(
        "lens",
        {"val_fraction": val_fraction, "val_sequences": list(val_sequences)},
        seed,
        per_layer,
        cache.fingerprint,
        extra={"split": split.describe(samples)},
    )


class TunedLens(nn.Module):
    """``head(h + A h + b)`` with A, b zero-initialised and the head frozen."""

    def __init__(self, head: DetectionHead, dim: int) -> None:
        super().__init__()
        self.head = head
        for param in self.head.parameters():
            param.requires_grad_(False)
        self.translator = nn.Linear(dim, dim)
        nn.init.zeros_(self.translator.weight)
        nn.init.zeros_(self.translator.bias)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(tokens + self.translator(tokens))


@register(
    "tuned-lens",
    "per-layer affine translator (zero-init = lens) distilled to the final layer, COCO mAP",
    role="readout",
    metrics={"AP50": "tuned-lens AP50", "AP": "tuned-lens AP (0.5:0.95)"},
)
def run_tuned_lens(
    cache: FeatureCache,
    layers: tuple[int, ...],
    seed: int = 0,
    val_fraction: Fraction = 0.3,
    val_sequences: tuple[str, ...] = (),
    epochs: PositiveInt = 30,
    lr: PositiveFloat = 1e-3,
    batch_size: PositiveInt = 64,
) -> AnalyzerResult:
    options = options_json(locals())
    samples, split, final_logits, final_boxes = _setup(cache, val_fraction, val_sequences)
    model = load_cache_model(cache)
    person = cache.person_index()
    per_layer, histories = {}, {}
    for layer in layers:
        torch.manual_seed(seed)
        lens = TunedLens(DetectionHead.from_model(model), model.config.hidden_size)

        def batches(epoch, layer=layer):
            rng = np.random.default_rng([seed, layer, epoch])
            return iter_batches(cache, layer, "det", split.train, batch_size, rng)

        def loss_fn(module, batch):
            idx, feats = batch
            logits, boxes = module(feats)
            return distillation_loss(logits, boxes, final_logits[idx], final_boxes[idx])

        def holdout(module, layer=layer):
            logits, boxes = apply_in_chunks(module, cache, layer, "det", split.holdout)
            return float(
                distillation_loss(logits, boxes, final_logits[split.holdout], final_boxes[split.holdout])["loss"]
            )

        histories[str(layer)] = fit(lens, batches, loss_fn, holdout, epochs, lr, desc=f"tuned-lens L{layer}")
        per_layer[layer] = _layer_metrics(lens, cache, layer, split, samples, final_logits, final_boxes, person)
    return AnalyzerResult(
        "tuned-lens",
        options,
        seed,
        per_layer,
        cache.fingerprint,
        extra={"split": split.describe(samples), "training": histories},
    )
