"""Dense auxiliary loss on the final layer's patch tokens: a training aid, dropped after training.

Each patch predicts objectness (does a person cover the patch centre, or is the patch the one
holding a person's box centre) and, where positive, that person's box. It teaches the encoder
box-aware features long before the detection tokens learn to read them out, which is what got
the prototype off the DETR plateau.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers.loss.loss_for_object_detection import generalized_box_iou

from probe_kit.ops.set_loss import cxcywh_to_xyxy


class DenseAuxHead(nn.Module):
    """Linear map of each patch token -> (objectness logit, 4 box logits)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 5)

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
        centre_patch = np.clip((bx[:, 1] * gh).astype(int), 0, gh - 1) * gw + np.clip((bx[:, 0] * gw).astype(int), 0, gw - 1)
        for n in np.argsort(-area):  # smaller boxes written last win shared centre patches
            objectness[b, centre_patch[n]] = 1.0
            targets[b, centre_patch[n]] = bx[n]
    return torch.from_numpy(objectness), torch.from_numpy(targets)


def dense_loss(pred: torch.Tensor, objectness: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """BCE objectness over all patches + (5 L1 + 2 GIoU) on positive patches, as YOLOS weights boxes."""
    obj_loss = nn.functional.binary_cross_entropy_with_logits(pred[..., 0], objectness)
    positive = objectness > 0
    if positive.any():
        pred_boxes = pred[..., 1:][positive].sigmoid()
        target = boxes[positive]
        l1 = nn.functional.l1_loss(pred_boxes, target)
        giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(target)))).mean()
    else:
        l1 = giou = pred.sum() * 0.0
    return {"loss_dense": obj_loss + 5 * l1 + 2 * giou, "dense_obj": obj_loss, "dense_l1": l1, "dense_giou": giou}
