"""Running a YOLOS up to a given block, with the model's own modules (for attribution)."""

from __future__ import annotations

import torch


def forward_to_layer(model, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` [B, T, D]: raw output of block ``layer`` (0 = embeddings), blocks after it skipped.

    Same convention as the feature cache: the mid position embedding (yolos-small) is added *after*
    a block's output is recorded, before the next block.
    """
    vit = model.vit
    height, width = pixel_values.shape[-2:]
    hidden = vit.embeddings(pixel_values)
    mid = vit.encoder.interpolation((height, width)) if model.config.use_mid_position_embeddings else None
    for index, block in enumerate(vit.encoder.layer[:layer]):
        if index > 0 and mid is not None:
            hidden = hidden + mid[index - 1].to(hidden.device)
        hidden = block(hidden)
    return hidden
