"""``ExitHead``: the one interface every exit-head type implements, and ``TrainingTargets``, what its loss reads.

An exit-head type is one ``nn.Module`` holding a head at every exit of a multi-exit YOLOS (the last
exit is the model's depth). Everything else in ``probe_kit.heads`` (training on cached tokens, block
fine-tuning, the exits folder, recording, policies, GFLOPs) goes through these methods, so a new type
is one subclass plus ``register_head_type`` (``heads/registry.py``); docs/exit-heads.md has a complete toy.

What a type states:

- ``name``: its registry name (``config.json`` ``head``, ``train-exits --head``);
- ``token_role(layer)``: which cached tokens exit ``layer`` reads (``det``, ``patch`` or ``cls``), so the
  cache-based trainer reads them and ``tokens`` slices them out of a live block output;
- ``from_model(model, layers)``: a fresh set of heads (initialised from the pretrained head where it can);
- ``module_at(layer)``: the module mapping those tokens to the exit's raw outputs;
- ``stats(layer, outputs, tokens, person_index)``: the outputs as ``ExitStats`` (person score and box per
  detection slot, best first or in token order, and the pooled tokens): what COCO detections, policies and
  gates are computed from;
- ``loss(targets)``: an ``ExitLoss`` over its outputs, with ``TrainingTargets`` (ground truth and the
  original model's cached outputs as teacher); it can rescale to a global batch for torchrun;
- ``exit_gflops(layer, profile, num_patches)``: the cost of one evaluation of exit ``layer``'s head.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

import numpy as np
import torch
from torch import nn

from probe_kit.heads.records import ExitStats
from probe_kit.models.flops import FlopProfile
from probe_kit.ops.set_loss import SetCriterion


@dataclass(frozen=True)
class TrainingTargets:
    """What exit losses train towards, for every image of a cache (row i = image i)."""

    boxes: list[dict]  # per image: ground-truth ``labels`` and normalised cx, cy, w, h ``boxes`` (set loss)
    final_logits: torch.Tensor  # [N, n_det, C+1]: the original model's cached outputs (the teacher)
    final_boxes: torch.Tensor  # [N, n_det, 4]
    gt_xywh: list[np.ndarray]  # per image: ground-truth boxes, normalised cx, cy, w, h (dense targets)
    grid: tuple[int, int]  # the cache's patch grid (h, w)
    person_index: int
    num_labels: int
    set_weight: float
    distill_weight: float

    def to(self, device: str | torch.device) -> TrainingTargets:
        """The same targets with their tensors on ``device``."""
        moved = [{k: v.to(device) for k, v in t.items()} for t in self.boxes]
        return TrainingTargets(
            moved,
            self.final_logits.to(device),
            self.final_boxes.to(device),
            self.gt_xywh,
            self.grid,
            self.person_index,
            self.num_labels,
            self.set_weight,
            self.distill_weight,
        )

    def criterion(self) -> SetCriterion:
        """The DETR set loss (transformers' Hungarian matcher) for this model's labels."""
        return SetCriterion(num_classes=self.num_labels).to(self.final_logits.device)


class ExitLoss(Protocol):
    """Loss of exit ``layer``'s ``outputs`` for images ``idx``: a dict with ``loss`` (the weighted total) and
    its logged components. Given the global batch ``whole`` (torchrun), each component is rescaled so that
    averaging the ranks' gradients gives exactly the one-process gradient of ``whole``."""

    def __call__(
        self, layer: int, outputs: object, idx: np.ndarray, whole: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]: ...


class ExitHead(nn.Module, ABC):
    """Heads at every exit of one model; ``layers`` ascending, the last the model's depth."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""

    def __init__(self, depth: int, num_det: int) -> None:
        super().__init__()
        self.depth = depth
        self.num_det = num_det
        self.det_token_indices: tuple[int, ...] = ()  # --det-tokens: what exits before the last read; () = all

    def use_det_tokens(self, indices: Sequence[int], where: str) -> None:
        """Exits before the last read only the detection tokens ``indices`` (``--det-tokens``); the last, the
        model's own head, keeps them all. Indices out of range or repeated are refused naming ``where``."""
        indices = tuple(int(i) for i in indices)
        if len(set(indices)) != len(indices) or not all(0 <= i < self.num_det for i in indices):
            raise ValueError(
                f"{where}: expected distinct detection-token indices in 0..{self.num_det - 1}, got {indices}"
            )
        self.det_token_indices = indices

    def token_subset(self, layer: int) -> tuple[int, ...] | None:
        """The detection tokens exit ``layer`` reads, where it reads only some of them."""
        if self.det_token_indices and layer != self.depth and self.token_role(layer) == "det":
            return self.det_token_indices
        return None

    def exit_module(self, layer: int) -> nn.Module:
        """``module_at(layer)``, preceded by the selection of its detection tokens where it reads only some."""
        subset = self.token_subset(layer)
        return self.module_at(layer) if subset is None else nn.Sequential(_Tokens(subset), self.module_at(layer))

    @property
    @abstractmethod
    def layers(self) -> tuple[int, ...]:
        """Exit layers, ascending; the last is ``depth``."""

    @classmethod
    @abstractmethod
    def from_model(cls, model, layers: Sequence[int]) -> Self:
        """Fresh heads at ``layers`` (plus the last layer) for a ``YolosForObjectDetection``."""

    @abstractmethod
    def token_role(self, layer: int) -> str:
        """The cached token role exit ``layer`` reads: ``det``, ``patch`` or ``cls``."""

    @abstractmethod
    def module_at(self, layer: int) -> nn.Module:
        """The module of exit ``layer``: tokens ``[B, T, D]`` -> its raw outputs."""

    @abstractmethod
    def stats(self, layer: int, outputs: object, tokens: torch.Tensor, person_index: int) -> ExitStats:
        """Exit ``layer``'s raw ``outputs`` on ``tokens`` as ``ExitStats`` (rows are images)."""

    @abstractmethod
    def loss(self, targets: TrainingTargets) -> ExitLoss:
        """This type's loss over ``targets`` (built once per training run)."""

    @abstractmethod
    def exit_gflops(self, layer: int, profile: FlopProfile, num_patches: int) -> float:
        """GFLOPs of one evaluation of exit ``layer``'s head on an image with ``num_patches`` patches."""

    def trained_layers(self, train_last: bool) -> tuple[int, ...]:
        """Exits trained on cached tokens: every one but the last (the model's own head) unless ``train_last``."""
        return self.layers if train_last else self.layers[:-1]

    def finetuned_exits(self) -> tuple[int, ...]:
        """Exits whose preceding blocks ``--finetune-blocks`` trains (default: every exit)."""
        return self.layers

    def finetuned_parameters(self) -> Iterator[nn.Parameter]:
        """Head parameters trained with the blocks (default: all of them)."""
        return self.parameters()

    def forward(self, layer: int, tokens: torch.Tensor) -> object:
        """Exit ``layer``'s raw outputs on the tokens it reads."""
        return self.exit_module(layer)(tokens)

    def tokens(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The tokens exit ``layer`` reads of a block output ``hidden [B, T, D]`` (order ``[CLS, patches, DET]``)."""
        role = self.token_role(layer)
        if role == "det":
            return hidden[:, -self.num_det :]
        if role == "cls":
            return hidden[:, :1]
        return hidden[:, 1 : -self.num_det]

    def validate(self, cache_tokens: Sequence[str], where: str) -> None:
        """Refuse, naming ``where``, a cache that lacks the tokens this type trains on."""
        missing = sorted({self.token_role(k) for k in self.trained_layers(True)} - set(cache_tokens))
        if missing:
            raise ValueError(
                f"{where}: --head {self.name} reads {','.join(missing)} tokens, not in this cache (cached: "
                f"{','.join(cache_tokens)}); cache with --tokens {','.join(sorted({*cache_tokens, *missing}))}"
            )


class _Tokens(nn.Module):
    """Selects tokens ``indices`` of ``[B, T, D]`` (no parameters: a head's state dict is unchanged by it)."""

    def __init__(self, indices: Sequence[int]) -> None:
        super().__init__()
        self.indices = list(indices)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.indices]
