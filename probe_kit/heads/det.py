"""``det`` exit heads: one YOLOS-shaped detection head (LayerNorm + class/box MLPs) per exit, on det tokens.

Each head starts as a copy of the pretrained head, so before training the exit at the last layer
reproduces the model's own output. The loss is the DETR set loss against ground truth plus
distillation towards the original model's cached final outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self

import numpy as np
import torch
from torch import nn

from probe_kit import distributed
from probe_kit.heads.interface import ExitHead, ExitLoss, TrainingTargets
from probe_kit.heads.records import ExitStats, exit_stats
from probe_kit.models.flops import FlopProfile
from probe_kit.models.heads import DetectionHead
from probe_kit.ops.distill import DISTILL_WEIGHTS, distillation_loss, distillation_normalisers


class DetExitHeads(ExitHead):
    """One ``DetectionHead`` per exit layer, all on det tokens."""

    name = "det"
    summary = "heads on det tokens, initialised from the pretrained head"

    def __init__(self, heads: dict[int, DetectionHead], depth: int, num_det: int) -> None:
        super().__init__(depth, num_det)
        self.heads = nn.ModuleDict({str(k): v for k, v in sorted(heads.items())})

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.heads))

    @classmethod
    def from_model(cls, model, layers: Sequence[int]) -> Self:
        depth = model.config.num_hidden_layers
        chosen = sorted({*layers, depth})
        return cls({k: DetectionHead.from_model(model) for k in chosen}, depth, model.config.num_detection_tokens)

    def token_role(self, layer: int) -> str:
        return "det"

    def module_at(self, layer: int) -> nn.Module:
        return self.heads[str(layer)]

    def stats(self, layer: int, outputs: object, tokens: torch.Tensor, person_index: int) -> ExitStats:
        logits, boxes = outputs
        stats = exit_stats(logits, boxes, tokens, person_index)
        return stats if self.token_subset(layer) is None else _every_slot(stats, self.num_det)

    def loss(self, targets: TrainingTargets) -> ExitLoss:
        return SetAndDistillLoss(targets, self.token_subset)

    def exit_gflops(self, layer: int, profile: FlopProfile, num_patches: int) -> float:
        subset = self.token_subset(layer)  # the head runs per token: its cost scales with the tokens it reads
        return profile.head if subset is None else profile.head * len(subset) / self.num_det


def _every_slot(stats: ExitStats, num_det: int) -> ExitStats:
    """An exit on k detection tokens as ``num_det`` slots, so that every exit has as many (policies compare exits
    slot by slot): the unread slots detect nothing, surely (person probability 0, no-object 1, an empty box at the
    origin). As detections they are false positives of score 0 and no area, ranked last: they add no recall, so
    they cannot change AP."""
    missing = num_det - stats.person.shape[1]
    rows = stats.person.shape[0]
    return ExitStats(
        torch.cat([stats.person, stats.person.new_zeros(rows, missing)], 1),
        torch.cat([stats.top, stats.top.new_ones(rows, missing)], 1),
        torch.cat([stats.boxes, stats.boxes.new_zeros(rows, missing, 4)], 1),
        stats.pooled,
    )


class SetAndDistillLoss:
    """``set_weight`` x set loss vs ground truth + ``distill_weight`` x distillation towards the cached final
    outputs, for exits whose outputs are ``(logits [b, N, C+1], boxes [b, N, 4])`` (see ``ExitLoss``)."""

    def __init__(
        self, targets: TrainingTargets, token_subset: Callable[[int], tuple[int, ...] | None] | None = None
    ) -> None:
        self.targets = targets
        self.criterion = targets.criterion()
        self.token_subset = token_subset  # per exit, the teacher's tokens it reads (--det-tokens); None: all

    def _teacher(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        subset = self.token_subset(layer) if self.token_subset is not None else None
        t = self.targets
        if subset is None:
            return t.final_logits, t.final_boxes
        return t.final_logits[:, list(subset)], t.final_boxes[:, list(subset)]

    def __call__(
        self, layer: int, outputs: object, idx: np.ndarray, whole: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        t = self.targets
        logits, boxes = outputs
        teacher_logits, teacher_boxes = self._teacher(layer)
        set_parts = self.criterion(logits, boxes, [t.boxes[i] for i in idx])
        distill = distillation_loss(logits, boxes, teacher_logits[idx], teacher_boxes[idx])
        if whole is None:
            set_loss, distill_loss = set_parts["loss"], distill["loss"]
            logged = {f"set_{k}": v for k, v in set_parts.items() if k != "loss"}
            logged |= {f"distill_{k}": v for k, v in distill.items() if k != "loss"}
        else:
            n_det = teacher_logits.shape[1]
            mine, all_ = [t.boxes[i] for i in idx], [t.boxes[i] for i in whole]
            norms = self.criterion.normalisers(mine, n_det), self.criterion.normalisers(all_, n_det)
            set_loss = distributed.global_batch_loss(set_parts, self.criterion.weights, *norms)
            teacher = distillation_normalisers(teacher_logits[idx]), distillation_normalisers(teacher_logits[whole])
            distill_loss = distributed.global_batch_loss(distill, DISTILL_WEIGHTS, *teacher)
            logged = {}
        total = t.set_weight * set_loss + t.distill_weight * distill_loss
        return {"loss": total, "set": set_loss, "distill": distill_loss, **logged}
