"""Turning YOLOS outputs into COCO-format detections."""

from __future__ import annotations

from typing import Sequence

import torch

from probe_kit.data.sample import Sample
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.ops.boxes import cxcywh_norm_to_xywh


def person_scores(logits: torch.Tensor, person_index: int) -> torch.Tensor:
    """[B, N, C+1] logits -> [B, N] person probability (softmax over all classes and no-object).

    transformers' post-processing takes the max class instead; for a one-class question the
    person probability itself is the ranking score.
    """
    return logits.float().softmax(-1)[..., person_index]


def detections_from_outputs(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    image_ids: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    person_index: int,
    category_id: int = 1,
) -> list[dict]:
    """Every detection token becomes one COCO detection (the full ranked list, no score cut).

    logits: [B, N, C+1]; pred_boxes: [B, N, 4] normalised cx, cy, w, h; sizes: (width, height)
    of each original image, since normalised boxes map proportionally onto it.
    """
    return detections_from_scores(person_scores(logits, person_index), pred_boxes, image_ids, sizes, category_id)


def detections_from_scores(
    scores: torch.Tensor,
    pred_boxes: torch.Tensor,
    image_ids: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    category_id: int = 1,
) -> list[dict]:
    """``detections_from_outputs`` from person probabilities [B, N] instead of logits."""
    scores = scores.cpu().numpy()
    detections = []
    for b, (image_id, (width, height)) in enumerate(zip(image_ids, sizes)):
        boxes = cxcywh_norm_to_xywh(pred_boxes[b], width, height)
        for box, score in zip(boxes, scores[b]):
            detections.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_id,
                    "bbox": [round(float(v), 3) for v in box],
                    "score": float(score),
                }
            )
    return detections


def sample_detections(
    logits: torch.Tensor, pred_boxes: torch.Tensor, samples: Sequence[Sample], person_index: int
) -> list[dict]:
    """``detections_from_outputs`` for the images ``samples`` (their ids and original sizes), in order."""
    return detections_from_outputs(
        logits, pred_boxes, [s.image_id for s in samples], [(s.width, s.height) for s in samples], person_index
    )


def score_outputs(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    samples: Sequence[Sample],
    person_index: int,
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7),
) -> tuple[dict, list[dict]]:
    """``(COCO metrics, detections)`` of per-image outputs ``[n, N, C+1]``, ``[n, N, 4]`` against ``samples``."""
    detections = sample_detections(logits, pred_boxes, samples, person_index)
    return evaluate(ground_truth_dict(samples), detections, thresholds), detections
