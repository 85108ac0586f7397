"""Scoring the model's own final outputs stored in a cache (no model needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from probe_kit.cache.reader import FeatureCache
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.models.predict import detections_from_outputs


def evaluate_cache(path: Path, thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)) -> tuple[dict, list[dict]]:
    """``(metrics, detections)`` of the cached final logits and boxes against the cached ground truth."""
    with FeatureCache(path) as cache:
        samples = cache.samples()
        logits, boxes = cache.final_outputs()
        person = cache.person_index()
    detections = detections_from_outputs(
        torch.from_numpy(logits),
        torch.from_numpy(boxes),
        [s.image_id for s in samples],
        [(s.width, s.height) for s in samples],
        person,
    )
    return evaluate(ground_truth_dict(samples), detections, thresholds), detections
