"""Detection heads that read a layer's detection tokens: YOLOS-shaped MLPs or linear maps.

One module serves the detection lens (the model's own final LayerNorm and heads), probes trained
from scratch, and exit heads initialised from the pretrained head.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3) -> nn.Module:
    """YOLOS's head shape: ``layers`` linear maps with ReLU between them (transformers' own module)."""
    from transformers.models.yolos.modeling_yolos import YolosMLPPredictionHead

    return YolosMLPPredictionHead(in_dim, hidden, out_dim, layers)


class Standardize(nn.Module):
    """Fixed per-dimension affine standardisation (an affine map, so a linear probe stays linear)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp(min=1e-6).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DetectionHead(nn.Module):
    """``norm -> (class logits [.., C+1], sigmoid boxes [.., 4] cx, cy, w, h)`` for det tokens [B, N, D]."""

    def __init__(self, norm: nn.Module, classifier: nn.Module, box: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.classifier = classifier
        self.box = box

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(tokens)
        return self.classifier(x), self.box(x).sigmoid()

    @classmethod
    def from_model(cls, model) -> "DetectionHead":
        """A copy of a YolosForObjectDetection's final LayerNorm and class/box heads."""
        return cls(
            copy.deepcopy(model.vit.layernorm),
            copy.deepcopy(model.class_labels_classifier),
            copy.deepcopy(model.bbox_predictor),
        )

    @classmethod
    def fresh(cls, dim: int, num_logits: int, kind: str, norm: nn.Module | None = None) -> "DetectionHead":
        """A new head: ``linear`` (one affine map each, after ``norm``: by default none) or ``mlp``
        (YOLOS-shaped: LayerNorm, then 3-layer MLPs)."""
        if kind == "linear":
            return cls(norm or nn.Identity(), nn.Linear(dim, num_logits), nn.Linear(dim, 4))
        if kind == "mlp":
            return cls(nn.LayerNorm(dim), mlp(dim, dim, num_logits), mlp(dim, dim, 4))
        raise ValueError(f"head kind: expected 'linear' or 'mlp', got {kind!r}")
