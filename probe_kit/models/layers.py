"""Running YOLOS block by block with the model's own modules, in the feature cache's convention.

Block ``k``'s raw output is ``hidden_states[k]``; yolos-small's mid position embedding is added
*after* that output is recorded, before the next block. The two helpers below hold that convention
for every caller that steps through the blocks itself (attribution, multi-exit inference).
``resolve_layers`` turns a user's layer selection into those indices, once, for every command.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch


class MidPositions:
    """yolos' mid position embeddings at one input size, interpolated a slice at a time on first use.

    Row ``i`` is added to block ``i + 1``'s output. The model interpolates all rows on every forward
    (~12% of yolos' time at 128 px; FLOP counts do not see it), though an image that leaves at block
    k needs rows ``< k - 1`` only. Rows are interpolated up to the next of ``stops`` (the blocks where
    images may leave) when first read, each slice through transformers' own
    ``InterpolateMidPositionEmbeddings.forward``: bicubic interpolation is per channel plane, so every
    row equals the all-row call's bit for bit (tested).
    """

    def __init__(self, model, size: tuple[int, int], stops: Sequence[int] = ()) -> None:
        self.interpolation = model.vit.encoder.interpolation
        self.size = size
        self.rows = model.config.num_hidden_layers - 1
        self.stops = sorted({min(max(int(s) - 1, 1), self.rows) for s in stops} | {self.rows})
        self.slices: list[tuple[int, torch.Tensor]] = []  # (first row, rows [first, next first)) in order
        self.done = 0  # rows interpolated so far

    def __getitem__(self, row: int) -> torch.Tensor:
        if not 0 <= row < self.rows:
            raise IndexError(f"mid position embedding row {row}: expected 0..{self.rows - 1}")
        while row >= self.done:
            stop = next(s for s in self.stops if s > self.done)
            part = self.interpolation.mid_position_embeddings[self.done : stop]
            layer_slice = SimpleNamespace(config=self.interpolation.config, mid_position_embeddings=part)
            self.slices.append((self.done, type(self.interpolation).forward(layer_slice, self.size)))
            self.done = stop
        first, rows = next((first, rows) for first, rows in reversed(self.slices) if first <= row)
        return rows[row - first]


def embed(model, pixel_values: torch.Tensor, stops: Sequence[int] = ()) -> tuple[torch.Tensor, MidPositions | None]:
    """``(hidden_states[0], mid position embeddings or None)`` for ``pixel_values`` [B, 3, H, W].

    ``stops``: blocks after which images may leave (an exit's layers, or the one block a static exit
    runs to); the mid position embeddings are interpolated up to each only when reached (``MidPositions``).
    """
    height, width = pixel_values.shape[-2:]
    mid = MidPositions(model, (height, width), stops) if model.config.use_mid_position_embeddings else None
    return model.vit.embeddings(pixel_values), mid


def next_block_input(model, mid: MidPositions | None, layer: int, output: torch.Tensor) -> torch.Tensor:
    """What block ``layer + 1`` receives from block ``layer``'s raw ``output``."""
    if mid is None or layer >= model.config.num_hidden_layers:
        return output
    return output + mid[layer - 1].to(output.device)


def forward_to_layer(model, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` [B, T, D] (0 = embeddings); blocks after ``layer`` are skipped."""
    hidden, mid = embed(model, pixel_values, stops=(layer,))
    for index, block in enumerate(model.vit.encoder.layer[:layer]):
        if index > 0:
            hidden = next_block_input(model, mid, index, hidden)
        hidden = block(hidden)
    return hidden


def resolve_layers(selection: str | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Layer selection -> sorted indices in ``0..num_layers`` (0 = embeddings, k = block k).

    Accepts ``all`` (blocks 1..L), lists ``3,6,9,12``, ranges ``1-4``, negative indices
    (``-1`` = last block) and ``embeddings``/``0``; a reversed range such as ``3-1`` is refused.
    """
    if isinstance(selection, str):
        items: list[int] = []
        for token in (t.strip() for t in selection.split(",")):
            if token == "all":
                items += range(1, num_layers + 1)
            elif token == "embeddings":
                items.append(0)
            elif "-" in token[1:]:
                lo, hi = token.split("-", 1) if not token.startswith("-") else (token, "")
                try:
                    lo_i, hi_i = int(lo), int(hi)
                except ValueError:
                    raise ValueError(f"--layers {selection!r}: bad range {token!r}") from None
                if lo_i > hi_i:
                    raise ValueError(f"--layers {selection!r}: range {token!r} is reversed; write {hi_i}-{lo_i}")
                items += range(lo_i, hi_i + 1)
            else:
                try:
                    items.append(int(token))
                except ValueError:
                    raise ValueError(f"--layers {selection!r}: {token!r} is not a layer index") from None
    else:
        items = list(selection)
    resolved = set()
    for index in items:
        real = num_layers + 1 + index if index < 0 else index
        if not 0 <= real <= num_layers:
            raise ValueError(f"--layers: layer {index} out of range; this model has blocks 1..{num_layers}")
        resolved.add(real)
    if not resolved:
        raise ValueError("--layers: empty selection")
    return tuple(sorted(resolved))
