"""Scoring the model's own final outputs stored in a cache (no model needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from probe_kit.cache.reader import FeatureCache
from probe_kit.models.predict import score_outputs


def evaluate_cache(path: Path, thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)) -> tuple[dict, list[dict]]:
    """``(metrics, detections)`` of the cached final logits and boxes against the cached ground truth."""
    with FeatureCache(path) as cache:
        samples = cache.samples()
        logits, boxes = cache.final_outputs()
        person = cache.person_index()
    return score_outputs(torch.from_numpy(logits), torch.from_numpy(boxes), samples, person, thresholds)
