"""FLOPs per layer and up to each exit, measured with ``torch.utils.flop_counter.FlopCounterMode``.

Counts are GFLOPs = 2 x multiply-adds (FlopCounterMode counts 2*m*n*k per matmul); the YOLOS
paper's figures are multiply-add style, i.e. half of ours. Softmax and LayerNorm are not counted.
The model must run eager attention: on CPU, FlopCounterMode counts SDPA as zero FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class FlopProfile:
    """GFLOPs of one image at ``input_size`` (w, h)."""

    input_size: tuple[int, int]
    embeddings: float
    blocks: tuple[float, ...]  # block k at index k-1
    head: float  # final LayerNorm + class and box heads on the det tokens

    def to_exit(self, layer: int, head: float | None = None) -> float:
        """Cumulative GFLOPs of running blocks 1..layer plus one head (default: the model's own)."""
        return self.embeddings + sum(self.blocks[:layer]) + (self.head if head is None else head)

    @property
    def full(self) -> float:
        return self.to_exit(len(self.blocks))

    def to_json(self) -> dict:
        return {
            "unit": "GFLOPs (2 x multiply-adds)",
            "input_size": list(self.input_size),
            "embeddings": self.embeddings,
            "blocks": list(self.blocks),
            "head": self.head,
            "cumulative": {str(k): self.to_exit(k) for k in range(1, len(self.blocks) + 1)},
        }


def _module_flops(counter: FlopCounterMode, name: str) -> float:
    return sum(counter.get_flop_counts().get(name, {}).values()) / 1e9


def measure_flops(model, input_size: tuple[int, int]) -> FlopProfile:
    """Count one forward pass of a batch-1 image of ``input_size`` (width, height)."""
    if model.config._attn_implementation != "eager":
        raise ValueError("FLOP counting needs eager attention (SDPA counts as 0 FLOPs on CPU); load with load_yolos")
    width, height = input_size
    pixels = torch.zeros(
        1, 3, height, width, dtype=next(model.parameters()).dtype, device=next(model.parameters()).device
    )
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixel_values=pixels)
    root = type(model).__name__
    blocks = tuple(_module_flops(counter, f"{root}.vit.encoder.layer.{i}") for i in range(len(model.vit.encoder.layer)))
    head = sum(
        _module_flops(counter, f"{root}.{m}") for m in ("vit.layernorm", "class_labels_classifier", "bbox_predictor")
    )
    embeddings = _module_flops(counter, f"{root}.vit.embeddings")
    return FlopProfile(input_size, embeddings, blocks, head)
