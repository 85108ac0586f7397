"""Running YOLOS block by block with the model's own modules, in the feature cache's convention.

Block ``k``'s raw output is ``hidden_states[k]``; yolos-small's mid position embedding is added
*after* that output is recorded, before the next block. The two helpers below hold that convention
for every caller that steps through the blocks itself (attribution, multi-exit inference).
"""

from __future__ import annotations

import torch


def embed(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(hidden_states[0], mid position embeddings or None)`` for ``pixel_values`` [B, 3, H, W]."""
    vit = model.vit
    height, width = pixel_values.shape[-2:]
    mid = vit.encoder.interpolation((height, width)) if model.config.use_mid_position_embeddings else None
    return vit.embeddings(pixel_values), mid


def next_block_input(model, mid: torch.Tensor | None, layer: int, output: torch.Tensor) -> torch.Tensor:
    """What block ``layer + 1`` receives from block ``layer``'s raw ``output``."""
    if mid is None or layer >= model.config.num_hidden_layers:
        return output
    return output + mid[layer - 1].to(output.device)


def forward_to_layer(model, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` [B, T, D] (0 = embeddings); blocks after ``layer`` are skipped."""
    hidden, mid = embed(model, pixel_values)
    for index, block in enumerate(model.vit.encoder.layer[:layer]):
        if index > 0:
            hidden = next_block_input(model, mid, index, hidden)
        hidden = block(hidden)
    return hidden
