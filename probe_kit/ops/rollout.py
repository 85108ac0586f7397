"""Attention rollout (Abnar & Zuidema 2020), batched, with head fusion and a per-row discard.

Per layer: fuse the heads, optionally zero the weakest ``discard_ratio`` of each row's entries
(never the row's own diagonal entry), add the identity and renormalise *rows*:
``A_l = rownorm(fused_l + I)``; then ``R_1 = A_1`` and ``R_l = A_l @ R_{l-1}``. Every row of every
``R_l`` sums to 1. Written by hand because no maintained library implements it for batched,
non-square token layouts; the tests check it against a slow reference loop and a hand-computed case.
"""

from __future__ import annotations

from typing import Sequence

import torch

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """[B, H, T, T] -> [B, T, T]."""
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.max(1).values
    if head_fusion == "min":
        return attention.min(1).values
    raise ValueError(f"head_fusion: expected one of {HEAD_FUSIONS}, got {head_fusion!r}")


def _discard(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the ``ratio`` weakest off-diagonal entries of every row, for every batch element."""
    tokens = fused.shape[-1]
    count = int(tokens * ratio)
    if count == 0:
        return fused
    eye = torch.eye(tokens, dtype=torch.bool, device=fused.device)
    ranked = fused.masked_fill(eye, float("inf"))  # the diagonal is never discarded
    weakest = ranked.topk(min(count, tokens - 1), dim=-1, largest=False).indices
    return fused.scatter(-1, weakest, 0.0)


def rollout_layers(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> list[torch.Tensor]:
    """``[R_1, ..., R_L]``, each [B, T, T], from per-layer attentions [B, H, T, T] (layer 1 first)."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio: expected a value in [0, 1), got {discard_ratio}")
    if not attentions:
        raise ValueError("attentions: expected at least one layer")
    rolled, result = None, []
    for attention in attentions:
        fused = _discard(fuse_heads(attention.float(), head_fusion), discard_ratio)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        a = fused + eye
        a = a / a.sum(dim=-1, keepdim=True)  # rows, not columns
        rolled = a if rolled is None else a @ rolled
        result.append(rolled)
    return result


def attention_rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Rollout ``[B, T, T]`` of the last layer given."""
    return rollout_layers(attentions, head_fusion, discard_ratio)[-1]
