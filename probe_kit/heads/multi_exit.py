"""``MultiExitYolos``: runs the blocks in order and stops computing once the exit policy is satisfied.

Real skipped work: blocks after an image's exit never run for it. In a batch, an image leaves the
batch when it exits and the remaining ones continue. Exit heads (any ``ExitHead``) read the raw block
output (before the mid position embedding), the convention of the feature cache they were trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from probe_kit.heads.interface import ExitHead
from probe_kit.heads.policies import OnlineRule
from probe_kit.heads.records import ExitStats
from probe_kit.models.layers import embed, next_block_input


@dataclass(frozen=True)
class Policy:
    """When an image may leave: ``fixed`` at ``layer`` (only that exit's head runs); ``replay`` at ``layer``
    with every exit head up to it run as an adaptive policy runs them (to time a recorded setting);
    ``online``: when ``rule`` (an ``OnlineRule``) says so at ``threshold``. Build with the class methods."""

    kind: str
    layer: int | None = None
    rule: OnlineRule | None = None
    threshold: float = 0.0

    @classmethod
    def fixed(cls, layer: int) -> Policy:
        return cls("fixed", layer=layer)

    @classmethod
    def replay(cls, layer: int) -> Policy:
        return cls("replay", layer=layer)

    @classmethod
    def online(cls, rule: OnlineRule, threshold: float) -> Policy:
        return cls("online", rule=rule, threshold=threshold)

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "replay", "online"):
            raise ValueError(f"policy: expected fixed, replay or online, got {self.kind!r}")
        if (self.kind == "online") != (self.rule is not None) or (self.kind != "online") == (self.layer is None):
            raise ValueError(f"policy {self.kind}: fixed and replay need a layer, online a rule")


@dataclass
class ExitOutput:
    """Each image's outputs at its exit."""

    person: torch.Tensor  # [B, N] person score per detection slot
    pred_boxes: torch.Tensor  # [B, N, 4] normalised cx, cy, w, h
    exit_layer: torch.Tensor  # [B] long


class MultiExitYolos(nn.Module):
    def __init__(self, model, heads: ExitHead, person_index: int) -> None:
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
        if policy.rule is None:
            return torch.full((batch,), layer == policy.layer, dtype=torch.bool)
        return policy.rule(history, policy.threshold).cpu()

    def exit_stats(self, layer: int, tokens: torch.Tensor) -> ExitStats:
        """``ExitStats`` of exit ``layer`` on the tokens it reads."""
        return self.heads.stats(layer, self.heads(layer, tokens), tokens, self.person_index)

    def exit_tokens(self, pixel_values: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(layer, tokens the exit reads)`` at every exit, in order; all blocks run (gradients as the caller sets)."""
        hidden, mid = embed(self.model, pixel_values)
        for layer, block in enumerate(self.model.vit.encoder.layer, start=1):
            hidden = block(hidden)
            if layer in self.heads.layers:
                yield layer, self.heads.tokens(layer, hidden)
            hidden = next_block_input(self.model, mid, layer, hidden)

    def all_exits(self, pixel_values: torch.Tensor) -> dict[int, object]:
        """Every exit's raw outputs, all blocks run, gradients kept (for block fine-tuning)."""
        return {layer: self.heads(layer, tokens) for layer, tokens in self.exit_tokens(pixel_values)}

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, policy: Policy) -> ExitOutput:
        """Outputs of each image at its exit; blocks after the last image's exit never run."""
        if policy.layer is not None and policy.layer not in self.heads.layers:
            raise ValueError(f"policy {policy.kind}: layer {policy.layer} has no exit head (exits {self.heads.layers})")
        batch = pixel_values.shape[0]
        hidden, mid = embed(self.model, pixel_values, (policy.layer,) if policy.kind == "fixed" else self.heads.layers)
        active = torch.arange(batch)
        out: dict[str, torch.Tensor] = {}
        exit_layer = torch.zeros(batch, dtype=torch.long)
        history: list[ExitStats] = []
        for layer, block in enumerate(self.model.vit.encoder.layer, start=1):
            hidden = block(hidden)
            fixed_elsewhere = policy.kind == "fixed" and layer not in (policy.layer, self.depth)
            if layer in self.heads.layers and not fixed_elsewhere:  # a fixed exit evaluates one head only
                stats = self.exit_stats(layer, self.heads.tokens(layer, hidden))
                if policy.kind != "fixed":  # what a rule decides on (replay computes it too: same cost)
                    history.append(stats)
                leaving = self._exits_now(policy, layer, len(active), history)
                for name, value in (("person", stats.person), ("pred_boxes", stats.boxes)):
                    out.setdefault(name, value.new_zeros((batch,) + value.shape[1:]))[active[leaving]] = value[leaving]
                exit_layer[active[leaving]] = layer
                if leaving.all():
                    break
                staying = ~leaving
                active, hidden = active[staying], hidden[staying]
                history[:] = [stats.select(staying) for stats in history]
            hidden = next_block_input(self.model, mid, layer, hidden)
        return ExitOutput(out["person"], out["pred_boxes"], exit_layer)
