"""Dense per-patch detection: objectness + box per patch token, its targets, loss and decoding.

Each patch predicts objectness (does a person cover the patch centre, or is the patch the one
holding a person's box centre) and, where positive, that person's box. Used by the reference
recipe (an auxiliary loss on the final layer, dropped after training) and by the dense probe.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from probe_kit.ops.boxes import paired_giou_xyxy
from probe_kit.ops.set_loss import cxcywh_to_xyxy


class DenseHead(nn.Module):
    """Each patch token -> (objectness logit, 4 box logits): one linear map, or a YOLOS-shaped MLP."""

    def __init__(self, hidden_size: int, kind: str = "linear") -> None:
        super().__init__()
        if kind == "linear":
            self.proj = nn.Linear(hidden_size, 5)
        elif kind == "mlp":
            from transformers.models.yolos.modeling_yolos import YolosMLPPredictionHead

            self.proj = YolosMLPPredictionHead(hidden_size, hidden_size, 5, 3)  # YOLOS's own head shape
        else:
            raise ValueError(f"dense head kind: expected 'linear' or 'mlp', got {kind!r}")

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, P, D] -> [B, P, 5]."""
        return self.proj(patches)


def dense_targets(boxes: list[np.ndarray], grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch targets from normalised cx,cy,w,h boxes: objectness [B, P] and box [B, P, 4].

    A patch is assigned the smallest box covering its centre (the nearer person in a crowd),
    and every box claims the patch holding its centre, so small people get a positive too.
    """
    gh, gw = grid
    ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    centres = np.stack([xs.ravel(), ys.ravel()], axis=-1)  # [P, 2] (x, y)
    objectness = np.zeros((len(boxes), gh * gw), dtype=np.float32)
    targets = np.zeros((len(boxes), gh * gw, 4), dtype=np.float32)
    for b, bx in enumerate(boxes):
        if len(bx) == 0:
            continue
        area = bx[:, 2] * bx[:, 3]
        inside = (np.abs(centres[:, None, 0] - bx[None, :, 0]) <= bx[None, :, 2] / 2) & (
            np.abs(centres[:, None, 1] - bx[None, :, 1]) <= bx[None, :, 3] / 2
        )  # [P, N]
        cost = np.where(inside, area[None, :], np.inf)
        owner = cost.argmin(1)
        has = np.isfinite(cost.min(1))
        objectness[b, has] = 1.0
        targets[b, has] = bx[owner[has]]
        centre_patch = np.clip((bx[:, 1] * gh).astype(int), 0, gh - 1) * gw + np.clip(
            (bx[:, 0] * gw).astype(int), 0, gw - 1
        )
        for n in np.argsort(-area):  # smaller boxes written last win shared centre patches
            objectness[b, centre_patch[n]] = 1.0
            targets[b, centre_patch[n]] = bx[n]
    return torch.from_numpy(objectness), torch.from_numpy(targets)


DENSE_WEIGHTS = {"dense_obj": 1.0, "dense_l1": 5.0, "dense_giou": 2.0}  # YOLOS's box weights


def dense_loss(pred: torch.Tensor, objectness: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE objectness over all patches + (5 L1 + 2 GIoU) on positive patches, as YOLOS weights boxes."""
    obj_loss = nn.functional.binary_cross_entropy_with_logits(pred[..., 0], objectness)
    positive = objectness > 0
    if positive.any():
        pred_boxes = pred[..., 1:][positive].sigmoid()
        target = boxes[positive]
        l1 = nn.functional.l1_loss(pred_boxes, target)
        giou = (1 - paired_giou_xyxy(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(target))).mean()
    else:
        l1 = giou = pred.sum() * 0.0
    parts = {"dense_obj": obj_loss, "dense_l1": l1, "dense_giou": giou}
    return {"loss_dense": sum(DENSE_WEIGHTS[k] * v for k, v in parts.items()), **parts}


def dense_normalisers(objectness: torch.Tensor) -> dict[str, float]:
    """What each component of ``dense_loss`` divides by over a batch: patches for the objectness mean,
    positive patches for L1 and GIoU (the constant 4 of L1's mean over coordinates cancels in ratios)."""
    positive = max(1.0, float((objectness > 0).sum()))
    return {"dense_obj": float(objectness.numel()), "dense_l1": positive, "dense_giou": positive}


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5, keep: int = 100) -> np.ndarray:
    """Greedy non-maximum suppression on [N, 4] (x0, y0, x1, y1); indices kept, best first.

    Written here because torchvision's ``nms`` does not load beside the pinned CPU torch build.
    """
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size and len(kept) < keep:
        best = order[0]
        kept.append(int(best))
        rest = order[1:]
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / np.maximum(area(boxes[best]) + area(boxes[rest]) - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)
