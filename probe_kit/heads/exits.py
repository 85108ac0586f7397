"""``ExitHeads``: one YOLOS-shaped detection head (LayerNorm + class/box MLPs) per exit layer.

Each head starts as a copy of the pretrained head, so before training the exit at the last layer
reproduces the model's own output. Training lives in ``heads/train.py``, the saved folder in
``heads/store.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from probe_kit.models.heads import DetectionHead


class ExitHeads(nn.Module):
    """One ``DetectionHead`` per exit layer."""

    def __init__(self, heads: dict[int, DetectionHead]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({str(k): v for k, v in sorted(heads.items())})

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.heads))

    def forward(self, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Det tokens [B, N, D] of ``layer`` -> (logits [B, N, C+1], boxes [B, N, 4])."""
        return self.heads[str(layer)](tokens)

    @classmethod
    def from_model(cls, model, layers: tuple[int, ...]) -> ExitHeads:
        return cls({layer: DetectionHead.from_model(model) for layer in layers})
