"""Leakage-free splits, targets, chunked batches, the cached model, scoring: what trained readouts share."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probe_kit.cache.reader import FeatureCache
from probe_kit.data.mot17 import sequence_matches
from probe_kit.data.sample import Sample
from probe_kit.models.predict import score_outputs
from probe_kit.models.record import ModelRecord, load_recorded
from probe_kit.ops.boxes import xywh_to_cxcywh_norm
from probe_kit.training.splits import SPLIT_GAP


@dataclass(frozen=True)
class Split:
    """Image indices (into the cache) that train, select (early stopping) and score."""

    train: np.ndarray
    holdout: np.ndarray
    val: np.ndarray
    unit: str  # what was split: "sequence", "frames" (contiguous blocks of one sequence) or "image"
    gap: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # frames left out between blocks

    def describe(self, samples: Sequence[Sample]) -> dict:
        """Which images trained, early-stopped and scored (counts, groups and image ids), for result JSON."""
        names = lambda idx: sorted({_group(samples[i].file_name) for i in idx})
        ids = lambda idx: [int(samples[i].image_id) for i in idx]
        return {
            "unit": self.unit,
            "train_images": len(self.train),
            "holdout_images": len(self.holdout),
            "val_images": len(self.val),
            "gap_images": len(self.gap),
            "train_groups": names(self.train),
            "holdout_groups": names(self.holdout),
            "val_groups": names(self.val),
            "train_image_ids": ids(self.train),
            "holdout_image_ids": ids(self.holdout),
            "val_image_ids": ids(self.val),
        }


def _group(file_name: str) -> str:
    """Sequence of a MOT17-layout image (``SEQ/000001.jpg``); the file itself otherwise."""
    return file_name.split("/", 1)[0] if "/" in file_name else file_name


def _take_last(
    indices: np.ndarray, groups: list[str], fraction: float, gap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Split ``indices`` into (first part, last ``fraction``, gap) by whole groups, or by contiguous frames
    with a ``gap`` share of the images (at least one) left out between the two blocks."""
    distinct = list(dict.fromkeys(groups[i] for i in indices))
    none = indices[:0]
    if len(distinct) > 1 and len(distinct) < len(indices):
        n_last = max(1, min(len(distinct) - 1, math.ceil(fraction * len(distinct))))
        last = set(distinct[-n_last:])
        mask = np.array([groups[i] in last for i in indices])
        return indices[~mask], indices[mask], none, "sequence"
    cut = max(1, min(len(indices) - 1, round(len(indices) * (1 - fraction))))
    if len(distinct) == len(indices):  # independent images: nothing to separate
        return indices[:cut], indices[cut:], none, "image"
    dropped = min(cut - 1, max(1, math.ceil(gap * len(indices)))) if gap > 0 else 0
    return indices[: cut - dropped], indices[cut:], indices[cut - dropped : cut], "frames"


def make_split(
    samples: Sequence[Sample],
    val_fraction: float = 0.3,
    holdout_fraction: float = 0.2,
    val_sequences: Sequence[str] | None = None,
    gap: float = SPLIT_GAP,
) -> Split:
    """Split without leakage: by sequence where there are several, else by contiguous frames.

    ``val_sequences`` names validation sequences the way ``--sequences`` does (``13``, ``MOT17-13``
    or ``MOT17-13-FRCNN``); the holdout for early stopping is taken from the training part the same
    way. Contiguous blocks of one sequence are separated by ``gap`` (see ``SPLIT_GAP``).
    """
    if len(samples) < 3:
        raise ValueError(f"split: need at least 3 images to train, select and score, got {len(samples)}")
    if not 0 <= gap < 1:
        raise ValueError(f"split gap: expected a share of the images in [0, 1), got {gap}")
    groups = [_group(s.file_name) for s in samples]
    everything = np.arange(len(samples))
    val_gap = everything[:0]
    if val_sequences:
        present = list(dict.fromkeys(groups))
        wanted = [g for g in present if any(sequence_matches(g, str(v)) for v in val_sequences)]
        if not wanted:
            raise ValueError(
                f"--val-sequences {','.join(map(str, val_sequences))}: none of them is in the cache "
                f"(sequences: {', '.join(present)})"
            )
        mask = np.array([g in wanted for g in groups])
        train_all, val, unit = everything[~mask], everything[mask], "sequence"
    else:
        train_all, val, val_gap, unit = _take_last(everything, groups, val_fraction, gap)
    train, holdout, holdout_gap, _ = _take_last(train_all, groups, holdout_fraction, gap)
    if not len(train) or not len(holdout) or not len(val):
        chosen = f"--val-sequences {','.join(map(str, val_sequences))}" if val_sequences else "split"
        raise ValueError(
            f"{chosen}: too few images or sequences for train/holdout/validation parts (train {len(train)}, "
            f"holdout {len(holdout)}, validation {len(val)} of {len(samples)} images)"
        )
    return Split(train, holdout, val, unit, np.sort(np.concatenate([val_gap, holdout_gap])))


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
    """Shuffled ``(indices, features)`` mini-batches: blocks of ``chunk`` images in a random order, a random order
    within each. A block that fits the cache's ``READ_BUDGET`` is read at once (sequential reads: det tokens); a
    larger one (patch tokens) a mini-batch at a time, so memory is one batch. Both read the same batches from the
    same draws."""
    blocks = [np.sort(indices[i : i + chunk]) for i in range(0, len(indices), chunk)]
    fits = cache.rows_per_read(layer, role) >= min(chunk, len(indices))
    for b in rng.permutation(len(blocks)):
        block = blocks[b]
        features = cache.read(layer, role, block) if fits else None
        order = rng.permutation(len(block))
        for start in range(0, len(block), batch_size):
            pick = order[start : start + batch_size]
            batch = features[pick] if fits else cache.read(layer, role, block[pick])
            yield block[pick], torch.from_numpy(batch)


def apply_in_chunks(module, cache: FeatureCache, layer: int, role: str, indices: np.ndarray):
    """``module`` on the ``role`` tokens of ``layer`` at ``indices``, ``READ_BUDGET`` bytes read at a time (no
    gradients); outputs concatenated (a tuple of outputs stays a tuple)."""
    chunk = cache.rows_per_read(layer, role)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(indices), chunk):
            outputs.append(module(torch.from_numpy(cache.read(layer, role, indices[start : start + chunk]))))
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def score(logits: torch.Tensor, boxes: torch.Tensor, samples: Sequence[Sample], person_index: int) -> dict:
    """COCO metrics of per-image ``logits [n, N, C+1]`` and ``boxes [n, N, 4]`` for ``samples``."""
    return score_outputs(logits, boxes, samples, person_index)[0]


def headline(metrics: dict) -> dict:
    """The metric keys a per-layer table shows (same names as ``probe-kit evaluate``)."""
    return {k: metrics[k] for k in ("AP", "AP50", "AP75", "AR100")}


def cache_record(cache: FeatureCache) -> ModelRecord:
    """The model record a cache stores in its ``model`` and ``preprocessing`` attributes."""
    return ModelRecord.from_cache_attrs(cache.model, cache.preprocessing, str(cache.path))


def load_cache_model(cache: FeatureCache, device: str = "cpu"):
    """The model the cache was made with, rebuilt from its record on ``device`` (refused if the weights changed)."""
    return load_recorded(cache_record(cache), device, str(cache.path))[0]


def options_json(options: dict) -> dict:
    """Options as JSON-safe values (tuples -> lists), without the arguments every analyzer takes."""
    kept = {k: v for k, v in options.items() if k not in ("cache", "layers", "seed", "device")}
    return json.loads(json.dumps(kept, default=list))
