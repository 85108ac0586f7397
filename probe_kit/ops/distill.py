"""Distillation towards the final layer's outputs (tuned lens, exit heads)."""

from __future__ import annotations

import torch

from probe_kit.ops.boxes import paired_giou_xyxy
from probe_kit.ops.set_loss import cxcywh_to_xyxy

DISTILL_WEIGHTS = {"loss_kl": 1.0, "loss_l1": 5.0, "loss_giou": 2.0}


def kl_to_final(final_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(p_final || p_layer) of the class distributions (no-object included)."""
    log_p_final = final_logits.log_softmax(-1)
    return (log_p_final.exp() * (log_p_final - logits.log_softmax(-1))).sum(-1).mean()


def distillation_loss(
    logits: torch.Tensor, boxes: torch.Tensor, final_logits: torch.Tensor, final_boxes: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Class KL to the final layer, plus 5 L1 + 2 GIoU on boxes weighted by the final foreground probability.

    Shapes: logits [B, N, C+1] (no-object last), boxes [B, N, 4] normalised cx, cy, w, h.
    """
    kl = kl_to_final(final_logits, logits)
    weight = _object_weight(final_logits)
    norm = weight.sum().clamp(min=1e-6)
    l1 = ((boxes - final_boxes).abs().sum(-1) * weight).sum() / norm
    paired = paired_giou_xyxy(cxcywh_to_xyxy(boxes.reshape(-1, 4)), cxcywh_to_xyxy(final_boxes.reshape(-1, 4)))
    giou = ((1 - paired) * weight.reshape(-1)).sum() / norm
    parts = {"loss_kl": kl, "loss_l1": l1, "loss_giou": giou}
    return {"loss": sum(DISTILL_WEIGHTS[k] * v for k, v in parts.items()), **parts}


def _object_weight(final_logits: torch.Tensor) -> torch.Tensor:
    """[B, N] probability that the final layer sees an object in each token."""
    return 1 - final_logits.softmax(-1)[..., -1]


def distillation_normalisers(final_logits: torch.Tensor) -> dict[str, float]:
    """What each component of ``distillation_loss`` divides by over a batch (``final_logits`` [B, N, C+1]):
    tokens for the KL mean, the summed object probability for L1 and GIoU."""
    norm = float(_object_weight(final_logits).sum().clamp(min=1e-6))
    return {"loss_kl": float(final_logits.shape[0] * final_logits.shape[1]), "loss_l1": norm, "loss_giou": norm}
