"""Block fine-tuning for every exit-head type: the k blocks before each exit, with the heads, on live images.

Cached tokens cannot train blocks, so this stage runs the model (the GPU path for real models; it
also runs on CPU for tiny ones). The loss is the sum over exits of the head type's loss (ground truth
plus distillation towards the *original* model's cached final outputs, so the teacher does not drift
with the blocks), each weighted by ``FineTuning.exit_weights`` (the joint regime: by depth). Every epoch
logs each exit's holdout AP50; the epoch kept is the lowest holdout loss or the best weighted AP50. Only
the chosen blocks and the heads' ``finetuned_parameters`` change; the blocks are
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
    """``blocks`` before each exit, for ``epochs`` at ``lr``, global batches of ``batch_size``, from ``seed``.

    ``exit_weights`` weights each exit's loss in the sum (None: all 1). ``select_by``: the epoch kept is the one
    with the lowest holdout loss (``loss``) or the highest weighted mean holdout AP50 of the exits (``AP50``);
    the holdout AP50 of every exit is logged per epoch either way (the learning curves)."""

    blocks: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    progress: bool = True
    exit_weights: dict[int, float] | None = None
    select_by: str = "loss"


def depth_weights(exits: Sequence[int], depth: int) -> dict[int, float]:
    """Each exit's loss weighted by its depth (``k / depth``): early exits weigh less, the final layer 1, so the
    joint regime does not trade the full model for its earliest exit."""
    return {k: k / depth for k in exits}


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

    def _weight(self, layer: int) -> float:
        weights = self.tuning.exit_weights
        return 1.0 if weights is None else weights[layer]

    def _losses(self, module, idx: np.ndarray, whole: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Every exit's loss on images ``idx`` (rescaled to the global batch ``whole`` when given), and their
        weighted sum (``loss``); the parts are logged unweighted."""
        return self._weighted(module(self._pixels(idx)), idx, whole)

    def _weighted(self, outputs: dict, idx: np.ndarray, whole: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        parts = {f"L{layer}": self.exit_loss(layer, out, idx, whole)["loss"] for layer, out in outputs.items()}
        return {"loss": sum(self._weight(int(k[1:])) * v for k, v in parts.items()), **parts}

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

    def holdout(self, _module) -> dict[str, float]:
        """The holdout loss, every exit's holdout AP50 (COCO, pycocotools) and what selects the epoch (``select``,
        lower is better): the loss, or minus the weighted mean AP50 of the exits."""
        from probe_kit.metrics.coco import evaluate, ground_truth_dict

        holdout, size = self.split.holdout, self.tuning.batch_size
        starts = list(range(0, len(holdout), size))
        lo, hi = distributed.shard_bounds(len(starts), self.rank, self.world)
        losses, detections = [], {}
        for i in starts[lo:hi]:
            loss, dets_by_exit = self._holdout_batch(holdout[i : i + size])
            losses.append(loss)
            for layer, dets in dets_by_exit.items():
                detections.setdefault(layer, []).extend(dets)
        losses = [v for part in distributed.all_gather_object(losses) for v in part]
        merged: dict[int, list] = {}
        for part in distributed.all_gather_object(detections):
            for layer, dets in part.items():
                merged.setdefault(layer, []).extend(dets)
        truth = ground_truth_dict([self.samples[i] for i in holdout])
        ap50 = {layer: evaluate(truth, dets)["AP50"] for layer, dets in sorted(merged.items())}
        record = {"holdout": float(np.mean(losses)), **{f"holdout_AP50_L{k}": v for k, v in ap50.items()}}
        if self.tuning.select_by == "AP50" and ap50:  # no holdout images: the loss (NaN) decides, as before
            total = sum(self._weight(k) for k in ap50)
            record["select"] = -sum(self._weight(k) * v for k, v in ap50.items()) / total
        return record

    @torch.no_grad()
    def _holdout_batch(self, idx: np.ndarray) -> tuple[float, dict[int, list[dict]]]:
        """The weighted loss of images ``idx`` and every exit's COCO detections of them (every det token, as
        ``evaluate-exits`` scores them), from one pass of the model."""
        from probe_kit.models.predict import detections_from_scores

        multi = self.exits.multi
        samples = [self.samples[i] for i in idx]
        ids, sizes = [s.image_id for s in samples], [(s.width, s.height) for s in samples]
        outputs, detections = {}, {}
        for layer, tokens in multi.exit_tokens(self._pixels(idx)):
            outputs[layer] = multi.heads(layer, tokens)  # what ``all_exits`` returns, tokens kept for the stats
            stats = multi.heads.stats(layer, outputs[layer], tokens, multi.person_index)
            detections[layer] = detections_from_scores(stats.person, stats.boxes, ids, sizes)
        return float(self._weighted(outputs, idx)["loss"]), detections


class _AllExits(nn.Module):
    """``multi.all_exits`` as ``forward``, so DistributedDataParallel sees (and all-reduces after) each pass."""

    def __init__(self, multi: MultiExitYolos) -> None:
        super().__init__()
        self.multi = multi

    def forward(self, pixel_values: torch.Tensor) -> dict[int, object]:
        return self.multi.all_exits(pixel_values)
