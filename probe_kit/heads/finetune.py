"""Block fine-tuning for every exit-head type: the k blocks before each exit, with the heads, on live images.

Cached tokens cannot train blocks, so this stage runs the model (the GPU path for real models; it
also runs on CPU for tiny ones). The loss is the sum over exits of the head type's loss (ground truth
plus distillation towards the *original* model's cached final outputs, so the teacher does not drift
with the blocks). Only the chosen blocks and the heads' ``finetuned_parameters`` change; the blocks are
saved beside the heads and applied on load over the unchanged base checkpoint.

Under torchrun this stage is data-parallel (DistributedDataParallel, gradients all-reduced): each
global batch of ``batch_size`` images is cut into contiguous per-rank parts, so the effective batch
size stays ``batch_size`` whatever the number of processes. Each head type's loss rescales its
components from this rank's normalisers to the global batch's (``ExitLoss``), so the averaged gradient
is exactly that of the whole batch in one process. The holdout batches are spread over the ranks and
their losses gathered, so every rank stops at the same epoch. Logged losses are means over ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from probe_kit import distributed
from probe_kit.heads.interface import ExitHead, ExitLoss, TrainingTargets
from probe_kit.heads.multi_exit import MultiExitYolos
from probe_kit.training.data import Split
from probe_kit.training.fit import fit


@dataclass(frozen=True)
class FineTuning:
    """``blocks`` before each exit, for ``epochs`` at ``lr``, global batches of ``batch_size``, from ``seed``."""

    blocks: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    progress: bool = True


def blocks_before_exits(exits: Sequence[int], k: int) -> list[int]:
    """0-based indices of the ``k`` blocks ending at each exit (block ``e`` is index ``e - 1``)."""
    return sorted({i for e in exits for i in range(max(0, e - k), e)})


def finetune_blocks(
    model, processor, heads: ExitHead, samples, split: Split, targets: TrainingTargets, tuning: FineTuning, device: str
) -> tuple[list[int], list[dict]]:
    """Train the blocks before ``heads.finetuned_exits()`` and the heads jointly; returns (block indices, history)."""
    multi = MultiExitYolos(model, heads, targets.person_index).to(device)
    chosen = blocks_before_exits(heads.finetuned_exits(), tuning.blocks)
    trainable = {id(p) for p in heads.finetuned_parameters()}
    for name, param in multi.named_parameters():
        in_block = any(name.startswith(f"model.vit.encoder.layer.{i}.") for i in chosen)
        param.requires_grad_(in_block or id(param) in trainable)
    exits = _AllExits(multi)
    step = _Steps(exits, processor, samples, heads.loss(targets.to(device)), split, tuning)
    if tuning.progress and distributed.is_main():
        from probe_kit.console import say

        say(distributed.effective_batch_line("fine-tune", tuning.batch_size))
    torch.manual_seed(tuning.seed)
    history = fit(
        distributed.data_parallel(exits),
        step.batches,
        step.loss,
        step.holdout,
        tuning.epochs,
        tuning.lr,
        desc=f"fine-tune {len(chosen)} blocks ({heads.name})",
        progress=tuning.progress and distributed.is_main(),
        reduce_logs=distributed.mean_over_ranks,
    )
    for param in multi.parameters():
        param.requires_grad_(False)
    multi.to("cpu")
    return chosen, history


class _Steps:
    """Batches, step loss and holdout loss of the fine-tuning run, on this rank's share of each global batch."""

    def __init__(self, exits: nn.Module, processor, samples, loss: ExitLoss, split: Split, tuning: FineTuning):
        self.exits, self.processor, self.samples, self.exit_loss = exits, processor, samples, loss
        self.split, self.tuning = split, tuning
        self.rank, self.world = distributed.rank(), distributed.world_size()

    def _pixels(self, idx: np.ndarray) -> torch.Tensor:
        device = next(self.exits.parameters()).device
        images = [self.samples[i].load_image() for i in idx]
        return self.processor(images=images, return_tensors="pt")["pixel_values"].to(device)

    def _losses(self, module, idx: np.ndarray, whole: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Every exit's loss on images ``idx`` (rescaled to the global batch ``whole`` when given), and their sum."""
        parts = {
            f"L{layer}": self.exit_loss(layer, out, idx, whole)["loss"]
            for layer, out in module(self._pixels(idx)).items()
        }
        return {"loss": sum(parts.values()), **parts}

    def batches(self, epoch: int):
        """``(this rank's contiguous part, the global batch)`` for each global batch of ``batch_size`` images."""
        size = self.tuning.batch_size
        order = np.random.default_rng([self.tuning.seed, epoch]).permutation(self.split.train)
        for i in range(0, len(order), size):
            batch = order[i : i + size]
            lo, hi = distributed.shard_bounds(len(batch), self.rank, self.world)
            # A rank left without images (a last batch smaller than the world) still steps, on one image
            # weighted 0, because every rank must join each gradient all-reduce.
            yield (batch[lo:hi], batch) if hi > lo else (batch[:1], None)

    def loss(self, module, part) -> dict[str, torch.Tensor]:
        idx, whole = part
        if whole is None:
            return {key: value * 0.0 for key, value in self._losses(module, idx).items()}
        return self._losses(module, idx, whole if self.world > 1 else None)

    def holdout(self, _module) -> float:
        holdout, size = self.split.holdout, self.tuning.batch_size
        starts = list(range(0, len(holdout), size))
        lo, hi = distributed.shard_bounds(len(starts), self.rank, self.world)
        mine = [float(self._losses(self.exits, holdout[i : i + size])["loss"]) for i in starts[lo:hi]]
        return float(np.mean([v for part in distributed.all_gather_object(mine) for v in part]))


class _AllExits(nn.Module):
    """``multi.all_exits`` as ``forward``, so DistributedDataParallel sees (and all-reduces after) each pass."""

    def __init__(self, multi: MultiExitYolos) -> None:
        super().__init__()
        self.multi = multi

    def forward(self, pixel_values: torch.Tensor) -> dict[int, object]:
        return self.multi.all_exits(pixel_values)
