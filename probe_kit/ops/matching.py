"""Matching final-layer detections to ground-truth persons, and patches to boxes (numpy, no model).

Shared by the analyzers that follow a matched detection back through the layers (rollout,
clustering, attribution).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from probe_kit.ops.boxes import cxcywh_norm_to_xywh

MATCH_IOU = 0.5


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [N, 4] x [M, 4] absolute xywh boxes -> [N, M]."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / np.maximum(union, 1e-12)


def match_final_to_gt(boxes_norm: np.ndarray, sample) -> list[tuple[int, int]]:
    """(token, gt) pairs: Hungarian matching of final-layer boxes to ground truth, IoU >= 0.5."""
    if len(sample.boxes) == 0:
        return []
    iou = iou_matrix(cxcywh_norm_to_xywh(boxes_norm, sample.width, sample.height), sample.boxes)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= MATCH_IOU]


def patches_inside(box: np.ndarray, grid: tuple[int, int], width: int, height: int) -> np.ndarray:
    """[gh * gw] bool: patch centres inside the absolute xywh ``box``."""
    gh, gw = grid
    ys, xs = np.meshgrid((np.arange(gh) + 0.5) * height / gh, (np.arange(gw) + 0.5) * width / gw, indexing="ij")
    x, y, w, h = box
    return ((xs >= x) & (xs <= x + w) & (ys >= y) & (ys <= y + h)).ravel()
