"""``det`` exit heads: one YOLOS-shaped detection head (LayerNorm + class/box MLPs) per exit, on det tokens.

Each head starts as a copy of the pretrained head, so before training the exit at the last layer
reproduces the model's own output. The loss is the DETR set loss against ground truth plus
distillation towards the original model's cached final outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        return exit_stats(logits, boxes, tokens, person_index)

    def loss(self, targets: TrainingTargets) -> ExitLoss:
        return SetAndDistillLoss(targets)

    def exit_gflops(self, layer: int, profile: FlopProfile, num_patches: int) -> float:
        return profile.head


class SetAndDistillLoss:
    """``set_weight`` x set loss vs ground truth + ``distill_weight`` x distillation towards the cached final
    outputs, for exits whose outputs are ``(logits [b, N, C+1], boxes [b, N, 4])`` (see ``ExitLoss``)."""

    def __init__(self, targets: TrainingTargets) -> None:
        self.targets = targets
        self.criterion = targets.criterion()

    def __call__(
        self, layer: int, outputs: object, idx: np.ndarray, whole: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        t = self.targets
        logits, boxes = outputs
        set_parts = self.criterion(logits, boxes, [t.boxes[i] for i in idx])
        distill = distillation_loss(logits, boxes, t.final_logits[idx], t.final_boxes[idx])
        if whole is None:
            set_loss, distill_loss = set_parts["loss"], distill["loss"]
            logged = {f"set_{k}": v for k, v in set_parts.items() if k != "loss"}
            logged |= {f"distill_{k}": v for k, v in distill.items() if k != "loss"}
        else:
            n_det = t.final_logits.shape[1]
            mine, all_ = [t.boxes[i] for i in idx], [t.boxes[i] for i in whole]
            norms = self.criterion.normalisers(mine, n_det), self.criterion.normalisers(all_, n_det)
            set_loss = distributed.global_batch_loss(set_parts, self.criterion.weights, *norms)
            teacher = distillation_normalisers(t.final_logits[idx]), distillation_normalisers(t.final_logits[whole])
            distill_loss = distributed.global_batch_loss(distill, DISTILL_WEIGHTS, *teacher)
            logged = {}
        total = t.set_weight * set_loss + t.distill_weight * distill_loss
        return {"loss": total, "set": set_loss, "distill": distill_loss, **logged}
