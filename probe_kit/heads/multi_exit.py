"""``MultiExitYolos``: runs the blocks in order and stops computing once the exit policy is satisfied.

Real skipped work: blocks after an image's exit never run for it. In a batch, an image leaves the
batch when it exits and the remaining ones continue. Exit heads read the raw block output (before
the mid position embedding), the convention of the feature cache they were trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from probe_kit.heads.dense_exit import DenseExitHeads
from probe_kit.heads.exits import ExitHeads
from probe_kit.heads.policies import RULES
from probe_kit.heads.records import ExitStats, exit_stats
from probe_kit.models.layers import embed, next_block_input

CONTROL = ("fixed", "replay")  # policy kinds of MultiExitYolos itself; every other kind is a registered rule


@dataclass(frozen=True)
class Policy:
    """When an image may leave: ``fixed`` at ``layer`` (only that exit's head runs); ``replay`` at
    ``layer`` with every exit head up to it run as an adaptive policy runs them (to time a recorded
    sweep setting); otherwise the online rule registered as ``kind`` (``probe_kit.heads.policies``)
    at ``threshold``: ``confidence`` leaves when no det token is undecided (every token's person
    probability <= 1 - threshold or >= threshold), ``patience`` when this exit's kept detections
    agree with the previous exit's (same tokens, IoU >= threshold), or a plug-in."""

    kind: str = "confidence"
    threshold: float = 0.9
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONTROL and self.kind not in RULES:
            raise ValueError(f"policy: expected one of {list(CONTROL) + sorted(RULES)}, got {self.kind!r}")
        if self.kind in CONTROL and self.layer is None:
            raise ValueError(f"policy {self.kind}: needs a layer")


@dataclass
class ExitOutput:
    """Each image's outputs at its exit."""

    person: torch.Tensor  # [B, N] person score per detection
    pred_boxes: torch.Tensor  # [B, N, 4] normalised cx, cy, w, h
    exit_layer: torch.Tensor  # [B] long
    logits: torch.Tensor | None = None  # [B, N, C+1]; None for dense exit heads (they give objectness, not classes)


class MultiExitYolos(nn.Module):
    def __init__(self, model, heads: ExitHeads | DenseExitHeads, person_index: int) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.person_index = person_index
        self.depth = model.config.num_hidden_layers
        if self.depth not in heads.layers:
            raise ValueError(f"exit heads {heads.layers}: the last layer {self.depth} must be an exit")

    def _exits_now(self, policy: Policy, layer: int, batch: int, history: list[ExitStats]) -> torch.Tensor:
        """[b] bool: which of the ``batch`` active images leave at ``layer``."""
        if layer == self.depth:
            return torch.ones(batch, dtype=torch.bool)
        if policy.kind in CONTROL:
            return torch.full((batch,), layer == policy.layer, dtype=torch.bool)
        return RULES[policy.kind](history, policy.threshold).cpu()

    def tokens(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """What exit ``layer`` reads of the block output ``hidden [B, T, D]``: det tokens, or a dense exit's patches."""
        if isinstance(self.heads, DenseExitHeads):
            return self.heads.tokens(layer, hidden)
        return hidden[:, -self.model.config.num_detection_tokens :]

    def exit_stats(self, layer: int, tokens: torch.Tensor) -> ExitStats:
        """``ExitStats`` of exit ``layer`` on the tokens it reads (a dense exit: its NMS-kept patches)."""
        if isinstance(self.heads, DenseExitHeads):
            return self.heads.stats(layer, tokens, self.person_index)
        return exit_stats(*self.heads(layer, tokens), tokens, self.person_index)

    def exit_tokens(self, pixel_values: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(layer, tokens the exit reads)`` at every exit, in order; all blocks run (gradients as the caller sets)."""
        hidden, mid = embed(self.model, pixel_values)
        for layer, block in enumerate(self.model.vit.encoder.layer, start=1):
            hidden = block(hidden)
            if layer in self.heads.layers:
                yield layer, self.tokens(layer, hidden)
            hidden = next_block_input(self.model, mid, layer, hidden)

    def all_exits(self, pixel_values: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Every exit's ``(logits, boxes)``, all blocks run, gradients kept (for joint fine-tuning)."""
        return {layer: self.heads(layer, tokens) for layer, tokens in self.exit_tokens(pixel_values)}

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, policy: Policy) -> ExitOutput:
        """Outputs of each image at its exit; blocks after the last image's exit never run."""
        if policy.kind in CONTROL and policy.layer not in self.heads.layers:
            raise ValueError(f"policy {policy.kind}: layer {policy.layer} has no exit head (exits {self.heads.layers})")
        batch = pixel_values.shape[0]
        hidden, mid = embed(self.model, pixel_values, (policy.layer,) if policy.kind in CONTROL else self.heads.layers)
        active = torch.arange(batch)
        out: dict[str, torch.Tensor] = {}
        dense = isinstance(self.heads, DenseExitHeads)
        exit_layer = torch.zeros(batch, dtype=torch.long)
        history: list[ExitStats] = []
        for layer, block in enumerate(self.model.vit.encoder.layer, start=1):
            hidden = block(hidden)
            fixed_elsewhere = policy.kind == "fixed" and layer not in (policy.layer, self.depth)
            if layer in self.heads.layers and not fixed_elsewhere:  # a fixed exit evaluates one head only
                tokens = self.tokens(layer, hidden)
                logits = None
                if dense:  # a dense exit's detections are its NMS-kept patches: stats are the output
                    stats = self.exit_stats(layer, tokens)
                else:
                    logits, boxes = self.heads(layer, tokens)
                    stats = exit_stats(logits, boxes, tokens, self.person_index)
                if policy.kind != "fixed":  # what a rule decides on (replay computes it too: same cost)
                    history.append(stats)
                leaving = self._exits_now(policy, layer, len(active), history)
                parts = {"person": stats.person, "pred_boxes": stats.boxes} | ({} if dense else {"logits": logits})
                for name, value in parts.items():
                    out.setdefault(name, value.new_zeros((batch,) + value.shape[1:]))[active[leaving]] = value[leaving]
                exit_layer[active[leaving]] = layer
                if leaving.all():
                    break
                staying = ~leaving
                active, hidden = active[staying], hidden[staying]
                history[:] = [stats.select(staying) for stats in history]
            hidden = next_block_input(self.model, mid, layer, hidden)
        return ExitOutput(out["person"], out["pred_boxes"], exit_layer, out.get("logits"))
