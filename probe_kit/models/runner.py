"""Batched YOLOS inference over samples, shared by the feature cache and live evaluation.

Batches never mix input sizes: YOLOS ignores ``pixel_mask``, so padded patches would join
attention and change the features (facts.md). Batch ``b`` always covers samples
``[b * batch_size, (b + 1) * batch_size)`` (split further where the size changes), so a run
resumed at a batch boundary forms exactly the batches an uninterrupted run forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from probe_kit.data.sample import Sample


@dataclass
class Batch:
    """One forward pass: its samples, the outputs, and the processor's input size (w, h)."""

    start: int  # index of the first sample in the full list
    samples: list[Sample]
    outputs: object  # YolosObjectDetectionOutput
    input_size: tuple[int, int]


def input_size(processor, sample: Sample) -> tuple[int, int]:
    """(width, height) the processor resizes ``sample`` to, from its metadata only (no decoding)."""
    from transformers.models.yolos.image_processing_pil_yolos import get_size_with_aspect_ratio_yolos

    size = processor.size
    if size.get("shortest_edge") is None:
        return int(size["width"]), int(size["height"])
    height, width = get_size_with_aspect_ratio_yolos(
        (sample.height, sample.width), size["shortest_edge"], size.get("longest_edge")
    )
    return int(width), int(height)


def patch_pixels(model) -> int:
    """The side of one of ``model``'s square patches in pixels (its config may give it as an int or a pair)."""
    patch = model.config.patch_size
    return patch[0] if isinstance(patch, (list, tuple)) else patch


def batch_bounds(samples: Sequence[Sample], processor, batch_size: int, start: int = 0) -> list[tuple[int, int]]:
    """[start, end) index ranges of the batches from ``start`` on (``start`` must be a boundary)."""
    bounds = []
    for block in range(start - start % batch_size, len(samples), batch_size):
        lo, hi = max(block, start), min(block + batch_size, len(samples))
        i = lo
        while i < hi:
            size = input_size(processor, samples[i])
            j = i + 1
            while j < hi and input_size(processor, samples[j]) == size:
                j += 1
            bounds.append((i, j))
            i = j
    return bounds


def run_batches(
    model,
    processor,
    samples: Sequence[Sample],
    batch_size: int,
    start: int = 0,
    hidden_states: bool = False,
    attentions: bool = False,
) -> Iterator[Batch]:
    """Yield one ``Batch`` per forward pass over ``samples[start:]`` (no gradients)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for lo, hi in batch_bounds(samples, processor, batch_size, start):
        chunk = list(samples[lo:hi])
        encoded = processor(images=[s.load_image() for s in chunk], return_tensors="pt")
        pixels = encoded["pixel_values"].to(device=device, dtype=dtype)
        with torch.no_grad():
            outputs = model(pixel_values=pixels, output_hidden_states=hidden_states, output_attentions=attentions)
        yield Batch(lo, chunk, outputs, (pixels.shape[-1], pixels.shape[-2]))
