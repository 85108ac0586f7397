"""One pass over the images, every exit recorded: what policies, detections and AP are computed from.

Each image runs through all blocks once (``MultiExitYolos.exit_tokens``), in batches of consecutive
images of one input size (``batch_size`` images decoded at a time, so memory holds the recorded
outputs and one batch, never all images; batch 1 reproduces a live batch-1 run bit for bit, larger
batches agree to float rounding, ~1e-7 in probability). At every exit the head's
outputs are reduced to ``ExitStats``: the person probability and box of each det token (all that
COCO detections need) and the det tokens' mean (a cheap feature for learned gates). A policy
setting is then a choice of one exit per image (``ExitRecords.pick``), without running the model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probe_kit import distributed
from probe_kit.data.sample import Sample
from probe_kit.models.predict import detections_from_scores, person_scores
from probe_kit.models.runner import batch_bounds

FIELDS = ("person", "top", "boxes", "pooled")  # ExitStats' tensors, in order
KEEP_SCORE = 0.5  # a detection slot whose person probability reaches this is a kept detection


@dataclass(frozen=True)
class ExitStats:
    """One exit's outputs for a batch of images (rows are images)."""

    person: torch.Tensor  # [B, N] person probability per det token (softmax over classes + no-object)
    top: torch.Tensor  # [B, N] top class probability per det token (no-object included)
    boxes: torch.Tensor  # [B, N, 4] normalised cx, cy, w, h
    pooled: torch.Tensor  # [B, D] mean of the det tokens the head read

    def select(self, rows: torch.Tensor) -> ExitStats:
        """The rows ``rows`` (bool mask or indices) of every field."""
        return ExitStats(*(getattr(self, f)[rows] for f in FIELDS))

    @classmethod
    def cat(cls, parts: Sequence[ExitStats]) -> ExitStats:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in FIELDS))


def exit_stats(logits: torch.Tensor, boxes: torch.Tensor, tokens: torch.Tensor, person_index: int) -> ExitStats:
    """``ExitStats`` of a head's outputs: logits [B, N, C+1], boxes [B, N, 4] on det tokens [B, N, D]."""
    top = logits.float().softmax(-1).max(-1).values
    return ExitStats(person_scores(logits, person_index), top, boxes.float(), tokens.float().mean(1))


@dataclass(frozen=True)
class ExitRecords:
    """Every exit's ``ExitStats`` for images ``image_ids`` (row i of each is image i)."""

    layers: tuple[int, ...]  # exit layers, ascending; the last is the model's depth
    image_ids: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]  # original (width, height) per image
    stats: dict[int, ExitStats]

    def __len__(self) -> int:
        return len(self.image_ids)

    def pick(self, exit_layers: torch.Tensor) -> ExitStats:
        """Each image's ``ExitStats`` at its own exit: ``exit_layers`` [I] -> rows [I, ...]."""
        if exit_layers.shape != (len(self),):
            raise ValueError(f"exit layers: expected one per image ({len(self)}), got shape {tuple(exit_layers.shape)}")
        unknown = set(exit_layers.tolist()) - set(self.layers)
        if unknown:
            raise ValueError(f"exit layers {sorted(unknown)}: no exit there (exits {list(self.layers)})")
        slot = torch.tensor([self.layers.index(int(k)) for k in exit_layers.tolist()])
        rows = torch.arange(len(self))
        return ExitStats(*(torch.stack([getattr(self.stats[k], f) for k in self.layers])[slot, rows] for f in FIELDS))

    def detections(self, exit_layers: torch.Tensor) -> list[dict]:
        """COCO-format detections of every image at its exit (every det token; see ``detections_from_scores``)."""
        picked = self.pick(exit_layers)
        return detections_from_scores(picked.person, picked.boxes, self.image_ids, self.sizes)


def record_exits(
    multi: torch.nn.Module, processor, samples: Sequence[Sample], progress: bool = True, batch_size: int = 8
) -> ExitRecords:
    """Run every exit of ``multi`` (a ``MultiExitYolos``: not imported here, it imports this module) once per
    image (streamed in batches of one input size) and keep each exit's ``ExitStats``."""
    from probe_kit.console import progress_bar

    device = next(multi.parameters()).device
    dtype = next(multi.parameters()).dtype
    parts: dict[int, list[ExitStats]] = {k: [] for k in multi.heads.layers}
    with torch.no_grad(), progress_bar(total=len(samples), desc="all exits", unit="img", show=progress) as bar:
        for lo, hi in batch_bounds(samples, processor, batch_size):
            images = [sample.load_image() for sample in samples[lo:hi]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            for layer, tokens in multi.exit_tokens(pixels.to(device=device, dtype=dtype)):
                stats = _to_cpu(multi.exit_stats(layer, tokens))
                _check_finite(stats, layer, samples[lo:hi])
                parts[layer].append(stats)
            bar.update(hi - lo)
    return ExitRecords(
        layers=multi.heads.layers,
        image_ids=tuple(int(s.image_id) for s in samples),
        sizes=tuple((s.width, s.height) for s in samples),
        stats={k: ExitStats.cat(v) for k, v in parts.items()},
    )


def _check_finite(stats: ExitStats, layer: int, samples: Sequence[Sample]) -> None:
    """Refuse outputs holding NaN or infinity before they are scored, naming the exit and the image."""
    finite = torch.isfinite(stats.person).all(-1) & torch.isfinite(stats.boxes).flatten(1).all(-1)
    if not finite.all():
        image = samples[int((~finite).nonzero()[0])].file_name
        raise ValueError(f"exit {layer}: its outputs for {image} hold NaN or infinity; no score is computed from them")


def _to_cpu(stats: ExitStats) -> ExitStats:
    return ExitStats(*(getattr(stats, f).cpu() for f in FIELDS))


def record_exits_sharded(
    multi: torch.nn.Module, processor, samples: Sequence[Sample], progress: bool = True
) -> ExitRecords:
    """``record_exits`` under torchrun: each rank records its contiguous share of ``samples`` and every rank
    gets all records in image order (``all_gather_object``); one process records everything itself."""
    lo, hi = distributed.shard_bounds(len(samples), distributed.rank(), distributed.world_size())
    mine = record_exits(multi, processor, samples[lo:hi], progress and distributed.is_main()) if hi > lo else None
    parts = [p for p in distributed.all_gather_object(mine) if p is not None]
    if len(parts) == 1:
        return parts[0]
    return ExitRecords(
        layers=parts[0].layers,
        image_ids=tuple(i for p in parts for i in p.image_ids),
        sizes=tuple(s for p in parts for s in p.sizes),
        stats={k: ExitStats.cat([p.stats[k] for p in parts]) for k in parts[0].layers},
    )
