"""Leakage-free splits, targets, chunked batches, the cached model, scoring: what trained readouts share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from probe_kit.cache.reader import FeatureCache
from probe_kit.data.sample import Sample
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.models.predict import detections_from_outputs
from probe_kit.ops.boxes import xywh_to_cxcywh_norm


@dataclass(frozen=True)
class Split:
    """Image indices (into the cache) that train, select (early stopping) and score."""

    train: np.ndarray
    holdout: np.ndarray
    val: np.ndarray
    unit: str  # what was split: "sequence", "frames" (contiguous halves of one sequence) or "image"

    def describe(self, samples: Sequence[Sample]) -> dict:
        """Which images trained and which scored, by name, for the result JSON."""
        names = lambda idx: sorted({_group(samples[i].file_name) for i in idx})  # noqa: E731
        return {
            "unit": self.unit,
            "train_images": int(len(self.train)),
            "holdout_images": int(len(self.holdout)),
            "val_images": int(len(self.val)),
            "train_groups": names(self.train),
            "holdout_groups": names(self.holdout),
            "val_groups": names(self.val),
            "val_image_ids": [int(samples[i].image_id) for i in self.val],
        }


def _group(file_name: str) -> str:
    """Sequence of a MOT17-layout image (``SEQ/000001.jpg``); the file itself otherwise."""
    return file_name.split("/", 1)[0] if "/" in file_name else file_name


def _take_last(indices: np.ndarray, groups: list[str], fraction: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Split ``indices`` into (first part, last ``fraction``) by whole groups, or by contiguous frames."""
    distinct = list(dict.fromkeys(groups[i] for i in indices))
    if len(distinct) > 1 and len(distinct) < len(indices):
        n_last = max(1, min(len(distinct) - 1, math.ceil(fraction * len(distinct))))
        last = set(distinct[-n_last:])
        mask = np.array([groups[i] in last for i in indices])
        return indices[~mask], indices[mask], "sequence"
    cut = max(1, min(len(indices) - 1, int(round(len(indices) * (1 - fraction)))))
    unit = "image" if len(distinct) == len(indices) else "frames"
    return indices[:cut], indices[cut:], unit


def make_split(
    samples: Sequence[Sample],
    val_fraction: float = 0.3,
    holdout_fraction: float = 0.2,
    val_sequences: Sequence[str] | None = None,
) -> Split:
    """Split without leakage: by sequence where there are several, else by contiguous frames.

    ``val_sequences`` names validation sequences explicitly (e.g. MOT17-11, MOT17-13); the holdout
    for early stopping is taken from the training part the same way.
    """
    if len(samples) < 3:
        raise ValueError(f"split: need at least 3 images to train, select and score, got {len(samples)}")
    groups = [_group(s.file_name) for s in samples]
    everything = np.arange(len(samples))
    if val_sequences:
        wanted = [g for g in dict.fromkeys(groups) if any(g == v or g.startswith(f"{v}-") for v in val_sequences)]
        if not wanted:
            raise ValueError(f"--val-sequences {list(val_sequences)}: none of them is in the cache")
        mask = np.array([g in wanted for g in groups])
        train_all, val, unit = everything[~mask], everything[mask], "sequence"
    else:
        train_all, val, unit = _take_last(everything, groups, val_fraction)
    train, holdout, _ = _take_last(train_all, groups, holdout_fraction)
    if not len(train) or not len(holdout) or not len(val):
        raise ValueError("split: too few images or sequences for train/holdout/validation parts")
    return Split(train, holdout, val, unit)


def box_targets(samples: Sequence[Sample], person_label: int) -> list[dict]:
    """DETR-style targets per image: ``class_labels`` and normalised cx, cy, w, h ``boxes``."""
    out = []
    for s in samples:
        boxes = torch.as_tensor(xywh_to_cxcywh_norm(s.boxes, s.width, s.height), dtype=torch.float32)
        out.append({"class_labels": torch.full((len(boxes),), person_label, dtype=torch.long), "boxes": boxes})
    return out


def iter_batches(
    cache: FeatureCache,
    layer: int,
    role: str,
    indices: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    chunk: int = 2048,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Shuffled ``(indices, features)`` mini-batches read chunk by chunk: memory stays bounded by ``chunk``."""
    blocks = [np.sort(indices[i : i + chunk]) for i in range(0, len(indices), chunk)]
    for b in rng.permutation(len(blocks)):
        block = blocks[b]
        features = cache.read(layer, role, block)
        order = rng.permutation(len(block))
        for start in range(0, len(block), batch_size):
            pick = order[start : start + batch_size]
            yield block[pick], torch.from_numpy(features[pick])


def apply_in_chunks(module, cache: FeatureCache, layer: int, role: str, indices: np.ndarray, chunk: int = 512):
    """``module`` on the ``role`` tokens of ``layer`` at ``indices``, read chunk by chunk (no gradients);
    outputs concatenated (a tuple of outputs stays a tuple)."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(indices), chunk):
            outputs.append(module(torch.from_numpy(cache.read(layer, role, indices[start : start + chunk]))))
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def score(logits: torch.Tensor, boxes: torch.Tensor, samples: Sequence[Sample], person_index: int) -> dict:
    """COCO metrics of per-image ``logits [n, N, C+1]`` and ``boxes [n, N, 4]`` for ``samples``."""
    detections = detections_from_outputs(
        logits, boxes, [s.image_id for s in samples], [(s.width, s.height) for s in samples], person_index
    )
    return evaluate(ground_truth_dict(samples), detections)


def headline(metrics: dict) -> dict:
    """The metric keys a per-layer table shows (same names as ``probe-kit evaluate``)."""
    return {k: metrics[k] for k in ("AP", "AP50", "AP75", "AR100")}


def load_cache_model(cache: FeatureCache):
    """The model the cache was made with, refused if its weights no longer match the cache's fingerprint."""
    from probe_kit.cache.writer import weights_fingerprint
    from probe_kit.models.loading import ModelSpec, load_yolos

    spec = ModelSpec(name=cache.model["name"], revision=cache.model["revision"])
    model, _ = load_yolos(spec)
    if weights_fingerprint(model) != cache.model["fingerprint"]:
        raise ValueError(
            f"{cache.path}: model {spec.name} has weights {weights_fingerprint(model)}, the cache was made "
            f"with {cache.model['fingerprint']}"
        )
    return model


def options_json(options: dict) -> dict:
    """Options as JSON-safe values (tuples -> lists), without the arguments every analyzer takes."""
    kept = {k: v for k, v in options.items() if k not in ("cache", "layers", "seed")}
    return json.loads(json.dumps(kept, default=list))
