"""``dense`` exit heads: per-patch objectness + box on a layer's *patch* tokens, as a real exit.

One ``DenseHead`` (the ``probe-dense`` MLP) per intermediate exit; the last layer keeps a copy of the
model's own head. A dense exit's detections are the best of what survives NMS, decoded as
``probe-dense`` decodes, in as many slots as the model has det tokens (``dense_stats``).

Loss: ``dense_loss`` against the ground truth plus, as distillation, the same loss against the final
layer's kept detections (person probability >= ``KEEP_SCORE``) turned into per-patch targets: the
teacher's boxes are what an exit has to agree with to let an image leave early (the gate's target).
The last exit, when trained (block fine-tuning), takes the det heads' set + distillation loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Self

import numpy as np
import torch
from torch import nn

from probe_kit import distributed
from probe_kit.heads.det import SetAndDistillLoss
from probe_kit.heads.interface import ExitHead, ExitLoss, TrainingTargets
from probe_kit.heads.records import KEEP_SCORE, ExitStats, exit_stats
from probe_kit.models.flops import FlopProfile
from probe_kit.models.heads import DetectionHead
from probe_kit.models.predict import person_scores
from probe_kit.ops.boxes import cxcywh_norm_to_xywh
from probe_kit.ops.dense import DENSE_WEIGHTS, DenseHead, dense_loss, dense_normalisers, dense_targets, nms

NMS_IOU = 0.5
DENSE_KIND = "mlp"  # the probe-dense analyzer's default head


def dense_stats(pred: torch.Tensor, patches: torch.Tensor, slots: int) -> ExitStats:
    """Dense outputs ``pred [B, P, 5]`` on ``patches [B, P, D]`` -> ``ExitStats`` with ``slots`` detections per image.

    Boxes are clipped to the image, NMS at IoU ``NMS_IOU`` keeps the best ``slots`` (score = sigmoid
    objectness), best first; unused slots get score 0 and an empty box (IoU 0 with everything, so they
    can never match and, ranked last, leave AP unchanged). IoU is unchanged by scaling x and y, so NMS
    on normalised boxes keeps what ``probe-dense`` keeps on pixel boxes.
    """
    batch = pred.shape[0]
    person = torch.zeros(batch, slots)
    boxes = torch.zeros(batch, slots, 4)
    for b, p in enumerate(pred.detach().cpu().float()):
        scores = p[:, 0].sigmoid().numpy()
        corners = cxcywh_norm_to_xywh(p[:, 1:].sigmoid(), 1.0, 1.0)  # clipped x, y, w, h in [0, 1]
        keep = nms(np.concatenate([corners[:, :2], corners[:, :2] + corners[:, 2:]], axis=1), scores, NMS_IOU, slots)
        xywh = torch.from_numpy(corners[keep]).float().reshape(-1, 4)
        person[b, : len(keep)] = torch.from_numpy(scores[keep])
        boxes[b, : len(keep)] = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], dim=1)
    person = person.to(pred.device)
    top = torch.maximum(person, 1 - person)  # objectness vs background; empty slots are sure background
    return ExitStats(person=person, top=top, boxes=boxes.to(pred.device), pooled=patches.float().mean(1))


class DenseExitHeads(ExitHead):
    """A ``DenseHead`` per intermediate exit (on patch tokens) + the model's own head at the last layer."""

    name = "dense"
    summary = "per-patch objectness + box on patch tokens (NMS); the last layer keeps the model's head"

    def __init__(self, dense: dict[int, DenseHead], final: DetectionHead, depth: int, num_det: int) -> None:
        super().__init__(depth, num_det)
        if not dense or any(not 0 < k < depth for k in dense):
            raise ValueError(f"dense exits {sorted(dense)}: expected layers between 1 and {depth - 1}")
        self.dense = nn.ModuleDict({str(k): v for k, v in sorted(dense.items())})
        self.final = final

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.dense)) + (self.depth,)

    @classmethod
    def from_model(cls, model, layers: Sequence[int]) -> Self:
        depth = model.config.num_hidden_layers
        intermediate = sorted({k for k in layers if k != depth})
        if not intermediate:
            raise ValueError(f"--layers {list(layers)}: a dense exit needs an intermediate layer (below {depth})")
        dense = {k: DenseHead(model.config.hidden_size, DENSE_KIND) for k in intermediate}
        return cls(dense, DetectionHead.from_model(model), depth, model.config.num_detection_tokens)

    def token_role(self, layer: int) -> str:
        return "det" if layer == self.depth else "patch"

    def module_at(self, layer: int) -> nn.Module:
        return self.final if layer == self.depth else self.dense[str(layer)]

    def stats(self, layer: int, outputs: object, tokens: torch.Tensor, person_index: int) -> ExitStats:
        if layer == self.depth:
            return exit_stats(*outputs, tokens, person_index)
        return dense_stats(outputs, tokens, self.num_det)

    def loss(self, targets: TrainingTargets) -> ExitLoss:
        return DenseLoss(targets)

    def exit_gflops(self, layer: int, profile: FlopProfile, num_patches: int) -> float:
        if layer == self.depth:
            return profile.head
        head = self.dense[str(layer)]
        return dense_head_gflops(head, num_patches, next(head.parameters()).shape[-1])

    def trained_layers(self, train_last: bool) -> tuple[int, ...]:
        return self.layers[:-1]  # the last layer keeps the model's own head

    def finetuned_exits(self) -> tuple[int, ...]:
        return self.layers[:-1]

    def finetuned_parameters(self) -> Iterator[nn.Parameter]:
        return self.dense.parameters()


class DenseLoss:
    """``set_weight`` x dense loss vs ground truth + ``distill_weight`` x dense loss vs the final layer's kept
    detections (per-patch targets); the last exit takes ``SetAndDistillLoss`` (see ``ExitLoss``)."""

    def __init__(self, targets: TrainingTargets) -> None:
        self.targets = targets
        self.final = SetAndDistillLoss(targets)

    @cached_property
    def _patch_targets(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        t = self.targets
        scores = person_scores(t.final_logits.cpu(), t.person_index).numpy()
        kept = [b[s >= KEEP_SCORE] for s, b in zip(scores, t.final_boxes.cpu().numpy(), strict=True)]
        return dense_targets(t.gt_xywh, t.grid), dense_targets(kept, t.grid)

    def __call__(
        self, layer: int, outputs: object, idx: np.ndarray, whole: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        if isinstance(outputs, tuple):  # the last exit: the model's own head
            return self.final(layer, outputs, idx, whole)
        pred = outputs.cpu()
        parts = {}
        for name, (objectness, boxes) in zip(("gt", "distill"), self._patch_targets, strict=True):
            loss = dense_loss(pred, objectness[idx], boxes[idx])
            if whole is None:
                parts[name] = loss["loss_dense"]
                parts |= {f"{name}_{k}": v for k, v in loss.items() if k != "loss_dense"}
            else:
                norms = dense_normalisers(objectness[idx]), dense_normalisers(objectness[whole])
                parts[name] = distributed.global_batch_loss(loss, DENSE_WEIGHTS, *norms)
        total = self.targets.set_weight * parts["gt"] + self.targets.distill_weight * parts["distill"]
        return {"loss": total.to(outputs.device), **parts}


def dense_head_gflops(head: nn.Module, num_patches: int, hidden: int) -> float:
    """GFLOPs of one dense head on ``num_patches`` patch tokens (FlopCounterMode: matrix products; NMS not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(head.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        head(torch.zeros(1, num_patches, hidden, dtype=param.dtype, device=param.device))
    return counter.get_total_flops() / 1e9
