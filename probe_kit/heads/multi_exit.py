"""``MultiExitYolos``: runs the blocks in order and stops computing once the exit policy is satisfied.

Real skipped work: blocks after an image's exit never run for it. In a batch, an image leaves the
batch when it exits and the remaining ones continue. Exit heads read the raw block output (before
the mid position embedding), the convention of the feature cache they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from probe_kit.heads.exits import ExitHeads
from probe_kit.models.layers import embed, next_block_input
from probe_kit.ops.boxes import paired_iou

KEEP_SCORE = 0.5  # a token whose person probability reaches this is a kept detection


@dataclass(frozen=True)
class Policy:
    """When an image may leave: ``fixed`` at ``layer``; ``confidence`` when every det token's top
    class probability (no-object included) is at least ``threshold``, i.e. each token is sure whether
    it holds a person; ``patience`` when the kept detections of ``patience`` consecutive exit pairs
    agree (same tokens kept, same-token IoU >= ``threshold``)."""

    kind: str = "confidence"
    threshold: float = 0.9
    layer: int | None = None
    patience: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "confidence", "patience"):
            raise ValueError(f"policy: expected fixed, confidence or patience, got {self.kind!r}")
        if self.kind == "fixed" and self.layer is None:
            raise ValueError("policy fixed: needs a layer")


@dataclass
class ExitOutput:
    logits: torch.Tensor  # [B, N, C+1], each image's outputs at its exit
    pred_boxes: torch.Tensor  # [B, N, 4]
    exit_layer: torch.Tensor  # [B] long


class MultiExitYolos(nn.Module):
    def __init__(self, model, heads: ExitHeads, person_index: int) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self.person_index = person_index
        self.depth = model.config.num_hidden_layers
        if self.depth not in heads.layers:
            raise ValueError(f"exit heads {heads.layers}: the last layer {self.depth} must be an exit")

    def _exits_now(self, policy: Policy, layer: int, logits, boxes, history: list) -> torch.Tensor:
        """[b] bool: which images of the active batch leave at ``layer``."""
        batch = logits.shape[0]
        if layer == self.depth:
            return torch.ones(batch, dtype=torch.bool)
        if policy.kind == "fixed":
            return torch.full((batch,), layer == policy.layer, dtype=torch.bool)
        probs = logits.softmax(-1)
        if policy.kind == "confidence":
            return probs.max(-1).values.min(-1).values >= policy.threshold
        kept = probs[..., self.person_index] >= KEEP_SCORE
        history.append((kept, boxes))
        if len(history) <= policy.patience:
            return torch.zeros(batch, dtype=torch.bool)
        agree = torch.ones(batch, dtype=torch.bool)
        for (kept_a, boxes_a), (kept_b, boxes_b) in zip(
            history[-policy.patience - 1 : -1], history[-policy.patience :]
        ):
            same_tokens = (kept_a == kept_b).all(-1)
            iou = paired_iou(boxes_a, boxes_b).masked_fill(~kept_b, 1.0).min(-1).values
            agree &= same_tokens & (iou >= policy.threshold)
        return agree

    def all_exits(self, pixel_values: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Every exit's ``(logits, boxes)``, all blocks run, gradients kept (for joint fine-tuning)."""
        hidden, mid = embed(self.model, pixel_values)
        n_det = self.model.config.num_detection_tokens
        outputs = {}
        for layer, block in enumerate(self.model.vit.encoder.layer, start=1):
            hidden = block(hidden)
            if layer in self.heads.layers:
                outputs[layer] = self.heads(layer, hidden[:, -n_det:])
            hidden = next_block_input(self.model, mid, layer, hidden)
        return outputs

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, policy: Policy) -> ExitOutput:
        """Outputs of each image at its exit; blocks after the last image's exit never run."""
        if policy.kind == "fixed" and policy.layer not in self.heads.layers:
            raise ValueError(f"policy fixed: layer {policy.layer} has no exit head (exits {self.heads.layers})")
        batch = pixel_values.shape[0]
        hidden, mid = embed(self.model, pixel_values)
        n_det = self.model.config.num_detection_tokens
        active = torch.arange(batch)
        out_logits = out_boxes = None
        exit_layer = torch.zeros(batch, dtype=torch.long)
        history: list = []
        for layer, block in enumerate(self.model.vit.encoder.layer, start=1):
            hidden = block(hidden)
            fixed_elsewhere = policy.kind == "fixed" and layer not in (policy.layer, self.depth)
            if layer in self.heads.layers and not fixed_elsewhere:  # a fixed exit evaluates one head only
                logits, boxes = self.heads(layer, hidden[:, -n_det:])
                if out_logits is None:
                    out_logits = logits.new_zeros((batch,) + logits.shape[1:])
                    out_boxes = boxes.new_zeros((batch,) + boxes.shape[1:])
                leaving = self._exits_now(policy, layer, logits, boxes, history)
                out_logits[active[leaving]] = logits[leaving]
                out_boxes[active[leaving]] = boxes[leaving]
                exit_layer[active[leaving]] = layer
                if leaving.all():
                    break
                staying = ~leaving
                active, hidden = active[staying], hidden[staying]
                history[:] = [(k[staying], b[staying]) for k, b in history]
            hidden = next_block_input(self.model, mid, layer, hidden)
        return ExitOutput(out_logits, out_boxes, exit_layer)
