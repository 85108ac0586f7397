"""Optional joint fine-tuning: the k blocks before each exit, with all exit heads, on live images.

Cached tokens cannot train blocks, so this stage runs the model (the GPU path for real models; it
also runs on CPU for tiny ones). The loss is the sum over exits of the set loss against ground
truth plus distillation towards the *original* model's final outputs (as cached), so the teacher
does not drift with the blocks. Only the chosen blocks and the heads change; they are saved beside
the heads and applied on load over the unchanged base checkpoint.

Under torchrun this stage is data-parallel (DistributedDataParallel, gradients all-reduced): each
global batch of ``batch_size`` images is cut into contiguous per-rank parts, so the effective batch
size stays ``batch_size`` whatever the number of processes. Every loss component is a sum divided by
a normaliser of the batch (boxes, class weights, tokens, object probability); each rank rescales its
components by its normaliser over the global batch's (``SetCriterion.normalisers``,
``distillation_normalisers``, computed from targets and cached teacher outputs that every rank holds),
so the averaged gradient is exactly that of the whole batch in one process. The holdout batches are
spread over the ranks and their losses gathered, so every rank sees the one-process holdout loss and
stops at the same epoch. Logged losses are means over ranks, i.e. the global batch's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from probe_kit import distributed
from probe_kit.heads.multi_exit import MultiExitYolos
from probe_kit.ops.distill import DISTILL_WEIGHTS, distillation_loss, distillation_normalisers
from probe_kit.ops.set_loss import SetCriterion
from probe_kit.training.fit import fit


def blocks_before_exits(exits: Sequence[int], k: int) -> list[int]:
    """0-based indices of the ``k`` blocks ending at each exit (block ``e`` is index ``e - 1``)."""
    return sorted({i for e in exits for i in range(max(0, e - k), e)})


def finetune_blocks(
    multi: MultiExitYolos,
    processor,
    samples,
    train: np.ndarray,
    holdout: np.ndarray,
    targets: list[dict],
    final_logits: torch.Tensor,
    final_boxes: torch.Tensor,
    criterion: SetCriterion,
    k: int,
    epochs: int,
    lr: float,
    batch_size: int,
    set_weight: float,
    distill_weight: float,
    seed: int,
    progress: bool = True,
) -> tuple[list[int], list[dict]]:
    """Train the blocks before each exit and the heads jointly; returns (block indices, history)."""
    chosen = blocks_before_exits(multi.heads.layers, k)
    for name, param in multi.named_parameters():
        in_block = any(name.startswith(f"model.vit.encoder.layer.{i}.") for i in chosen)
        param.requires_grad_(in_block or name.startswith("heads."))

    def pixels(idx: np.ndarray) -> torch.Tensor:
        device = next(multi.parameters()).device
        return processor(images=[samples[i].load_image() for i in idx], return_tensors="pt")["pixel_values"].to(device)

    exits = AllExits(multi)
    trained = distributed.data_parallel(exits)
    rank, world = distributed.rank(), distributed.world_size()

    def loss_on(module, idx: np.ndarray, whole: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Losses on images ``idx``; given the global batch ``whole`` they are rescaled to it (see the docstring)."""
        parts: dict[str, torch.Tensor] = {}
        for layer, (logits, boxes) in module(pixels(idx)).items():
            set_parts = criterion(logits, boxes, [targets[i] for i in idx])
            distill = distillation_loss(logits, boxes, final_logits[idx], final_boxes[idx])
            if whole is None:
                parts[f"set_L{layer}"], parts[f"distill_L{layer}"] = set_parts["loss"], distill["loss"]
                continue
            n_det = final_logits.shape[1]
            parts[f"set_L{layer}"] = distributed.global_batch_loss(
                set_parts,
                criterion.weights,
                criterion.normalisers([targets[i] for i in idx], n_det),
                criterion.normalisers([targets[i] for i in whole], n_det),
            )
            parts[f"distill_L{layer}"] = distributed.global_batch_loss(
                distill,
                DISTILL_WEIGHTS,
                distillation_normalisers(final_logits[idx]),
                distillation_normalisers(final_logits[whole]),
            )
        total = sum(set_weight * v for key, v in parts.items() if key.startswith("set_"))
        total = total + sum(distill_weight * v for key, v in parts.items() if key.startswith("distill_"))
        return {"loss": total, **parts}

    def batches(epoch: int):
        """``(this rank's contiguous part, the global batch)`` for each global batch of ``batch_size`` images."""
        order = np.random.default_rng([seed, epoch]).permutation(train)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            lo, hi = distributed.shard_bounds(len(batch), rank, world)
            # A rank left without images (a last batch smaller than the world) still steps, on one image
            # weighted 0, because every rank must join each gradient all-reduce.
            yield (batch[lo:hi], batch) if hi > lo else (batch[:1], None)

    def step_loss(module, part) -> dict[str, torch.Tensor]:
        idx, whole = part
        if whole is None:
            return {key: value * 0.0 for key, value in loss_on(module, idx).items()}
        return loss_on(module, idx, whole if world > 1 else None)

    def holdout_loss(_module) -> float:
        starts = list(range(0, len(holdout), batch_size))
        lo, hi = distributed.shard_bounds(len(starts), rank, world)
        mine = [float(loss_on(exits, holdout[i : i + batch_size])["loss"]) for i in starts[lo:hi]]
        return float(np.mean([v for part in distributed.all_gather_object(mine) for v in part]))

    if progress and distributed.is_main():
        from tqdm import tqdm

        tqdm.write(distributed.effective_batch_line("fine-tune", batch_size), file=sys.stderr)
    torch.manual_seed(seed)
    history = fit(
        trained,
        batches,
        step_loss,
        holdout_loss,
        epochs,
        lr,
        desc=f"fine-tune {len(chosen)} blocks",
        progress=progress and distributed.is_main(),
        reduce_logs=distributed.mean_over_ranks,
    )
    for param in multi.parameters():
        param.requires_grad_(False)
    return chosen, history


class AllExits(nn.Module):
    """``multi.all_exits`` as ``forward``, so DistributedDataParallel sees (and all-reduces after) each pass."""

    def __init__(self, multi: MultiExitYolos) -> None:
        super().__init__()
        self.multi = multi

    def forward(self, pixel_values: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return self.multi.all_exits(pixel_values)
