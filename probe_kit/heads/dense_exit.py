"""Dense exit heads: per-patch objectness + box on a layer's *patch* tokens, as a real exit.

An exits folder made with ``train-exits --head dense`` holds one ``DenseHead`` (the ``probe-dense``
MLP) per intermediate exit; the last layer keeps the model's own head (a copy of it). Training is
in ``heads/dense_train.py``.

Every exit, dense or not, is read out as ``ExitStats`` (``heads/records.py``): the det head keeps
every token (the full ranked list), a dense exit keeps the best of what survives NMS, decoded as
``probe-dense`` decodes, in as many slots as the model has det tokens (see ``dense_stats``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from probe_kit.heads.records import ExitStats, exit_stats
from probe_kit.models.heads import DetectionHead
from probe_kit.models.layers import embed, next_block_input
from probe_kit.ops.boxes import cxcywh_norm_to_xywh
from probe_kit.ops.dense import DenseHead, nms

NMS_IOU = 0.5
DENSE_KIND = "mlp"  # the probe-dense analyzer's default head


def dense_stats(pred: torch.Tensor, patches: torch.Tensor, slots: int) -> ExitStats:
    """Dense outputs ``pred [B, P, 5]`` on ``patches [B, P, D]`` -> ``ExitStats`` with ``slots`` detections per image.

    Boxes are clipped to the image, NMS at IoU ``NMS_IOU`` keeps the best ``slots`` (score = sigmoid
    objectness), best first; unused slots get score 0 and an empty box (IoU 0 with everything, so they
    can never match and, ranked last, leave AP unchanged). IoU is unchanged by scaling x and y, so NMS
    on normalised boxes keeps what ``probe-dense`` keeps on pixel boxes. ``slots`` is the model's number
    of det tokens: a dense exit gives as many detections as the model's own head.
    """
    batch = pred.shape[0]
    person = torch.zeros(batch, slots)
    boxes = torch.zeros(batch, slots, 4)
    for b, p in enumerate(pred.detach().cpu().float()):
        scores = p[:, 0].sigmoid().numpy()
        corners = cxcywh_norm_to_xywh(p[:, 1:].sigmoid(), 1.0, 1.0)  # clipped x, y, w, h in [0, 1]
        keep = nms(np.concatenate([corners[:, :2], corners[:, :2] + corners[:, 2:]], axis=1), scores, NMS_IOU, slots)
        xywh = torch.from_numpy(corners[keep]).float().reshape(-1, 4)
        person[b, : len(keep)] = torch.from_numpy(scores[keep])
        boxes[b, : len(keep)] = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], dim=1)
    person = person.to(pred.device)
    top = torch.maximum(person, 1 - person)  # objectness vs background; empty slots are sure background
    return ExitStats(person=person, top=top, boxes=boxes.to(pred.device), pooled=patches.float().mean(1))


class DenseExitHeads(nn.Module):
    """A ``DenseHead`` per intermediate exit (on patch tokens) + the model's own head at the last layer."""

    head_type = "dense"

    def __init__(self, dense: dict[int, DenseHead], final: DetectionHead, depth: int, num_det: int) -> None:
        super().__init__()
        if any(not 0 < k < depth for k in dense):
            raise ValueError(f"dense exits {sorted(dense)}: expected layers between 1 and {depth - 1}")
        self.dense = nn.ModuleDict({str(k): v for k, v in sorted(dense.items())})
        self.final = final
        self.depth = depth
        self.num_det = num_det

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.dense)) + (self.depth,)

    def tokens(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The tokens exit ``layer`` reads from the block output ``hidden [B, T, D]``: patches, or det tokens last."""
        return hidden[:, -self.num_det :] if layer == self.depth else hidden[:, 1 : -self.num_det]

    def forward(self, layer: int, tokens: torch.Tensor):
        """Dense exit: ``[B, P, D] -> [B, P, 5]``; last layer: ``[B, N, D] -> (logits, boxes)``."""
        return self.final(tokens) if layer == self.depth else self.dense[str(layer)](tokens)

    def stats(self, layer: int, tokens: torch.Tensor, person_index: int) -> ExitStats:
        """The exit's ``ExitStats`` from the tokens it reads (see ``tokens``)."""
        if layer == self.depth:
            return exit_stats(*self.final(tokens), tokens, person_index)
        return dense_stats(self.dense[str(layer)](tokens), tokens, self.num_det)

    @classmethod
    def from_model(cls, model, layers: Sequence[int]) -> DenseExitHeads:
        """Fresh dense heads at the intermediate ``layers``; the last layer copies the model's head."""
        depth = model.config.num_hidden_layers
        dense = {k: DenseHead(model.config.hidden_size, DENSE_KIND) for k in layers if k != depth}
        return cls(dense, DetectionHead.from_model(model), depth, model.config.num_detection_tokens)


def all_exit_outputs(model, heads: DenseExitHeads, pixel_values: torch.Tensor) -> dict[int, object]:
    """Every exit's raw output for ``pixel_values [B, 3, H, W]``, all blocks run, gradients kept."""
    hidden, mid = embed(model, pixel_values)
    outputs = {}
    for layer, block in enumerate(model.vit.encoder.layer, start=1):
        hidden = block(hidden)
        if layer in heads.layers:
            outputs[layer] = heads(layer, heads.tokens(layer, hidden))
        hidden = next_block_input(model, mid, layer, hidden)
    return outputs


def dense_head_gflops(head: nn.Module, num_patches: int, hidden: int) -> float:
    """GFLOPs of one dense head on ``num_patches`` patch tokens (FlopCounterMode: matrix products; NMS not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(head.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        head(torch.zeros(1, num_patches, hidden, dtype=param.dtype, device=param.device))
    return counter.get_total_flops() / 1e9
