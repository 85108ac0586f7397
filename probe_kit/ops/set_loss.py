"""DETR set loss (Hungarian matching; class CE with no-object weight, L1, GIoU) for any head.

Reuses transformers' ``HungarianMatcher`` and ``ImageLoss`` (the code YOLOS itself trains with)
rather than rewriting them; this module only wires them to a config-free interface.
"""

from __future__ import annotations

import torch
from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss

# YOLOS's own coefficients (facts.md): matching costs class 1, L1 5, GIoU 2; same loss weights.
LOSS_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class SetCriterion(torch.nn.Module):
    """Set loss for logits [B, N, C+1] (no-object last) and boxes [B, N, 4] normalised cx,cy,w,h."""

    def __init__(self, num_classes: int = 1, eos_coef: float = 0.1, weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = dict(LOSS_WEIGHTS if weights is None else weights)
        matcher = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
        self.loss = ImageLoss(matcher=matcher, num_classes=num_classes, eos_coef=eos_coef, losses=["labels", "boxes"])

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """targets: per image ``{"class_labels": [n] long, "boxes": [n, 4]}``; returns components and ``loss``."""
        parts = self.loss({"logits": logits, "pred_boxes": boxes}, targets)
        parts["loss"] = sum(self.weights[k] * parts[k] for k in self.weights)
        return parts

    def normalisers(self, targets: list[dict], num_queries: int) -> dict[str, float]:
        """What each weighted component divides by over a batch with ``targets`` (``num_queries`` per image):
        the class CE is a mean weighted 1 on matched queries and ``eos_coef`` on the rest; L1 and GIoU are
        sums over matched boxes divided by their number (at least 1), as in ``ImageLoss``. Data-parallel
        training rescales each rank's components by these to get the gradient of the whole batch."""
        matched = sum(min(len(t["class_labels"]), num_queries) for t in targets)
        boxes = max(1.0, float(sum(len(t["class_labels"]) for t in targets)))
        classes = matched + self.loss.eos_coef * (len(targets) * num_queries - matched)
        return {"loss_ce": float(classes), "loss_bbox": boxes, "loss_giou": boxes}
