"""Optional joint fine-tuning: the k blocks before each exit, with all exit heads, on live images.

Cached tokens cannot train blocks, so this stage runs the model (the GPU path for real models; it
also runs on CPU for tiny ones). The loss is the sum over exits of the set loss against ground
truth plus distillation towards the *original* model's final outputs (as cached), so the teacher
does not drift with the blocks. Only the chosen blocks and the heads change; they are saved beside
the heads and applied on load over the unchanged base checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from probe_kit.heads.multi_exit import MultiExitYolos
from probe_kit.ops.distill import distillation_loss
from probe_kit.ops.set_loss import SetCriterion
from probe_kit.training.fit import fit


def blocks_before_exits(exits: Sequence[int], k: int) -> list[int]:
    """0-based indices of the ``k`` blocks ending at each exit (block ``e`` is index ``e - 1``)."""
    return sorted({i for e in exits for i in range(max(0, e - k), e)})


def finetune_blocks(
    multi: MultiExitYolos,
    processor,
    samples,
    train: np.ndarray,
    holdout: np.ndarray,
    targets: list[dict],
    final_logits: torch.Tensor,
    final_boxes: torch.Tensor,
    criterion: SetCriterion,
    k: int,
    epochs: int,
    lr: float,
    batch_size: int,
    set_weight: float,
    distill_weight: float,
    seed: int,
    progress: bool = True,
) -> tuple[list[int], list[dict]]:
    """Train the blocks before each exit and the heads jointly; returns (block indices, history)."""
    chosen = blocks_before_exits(multi.heads.layers, k)
    for name, param in multi.named_parameters():
        in_block = any(name.startswith(f"model.vit.encoder.layer.{i}.") for i in chosen)
        param.requires_grad_(in_block or name.startswith("heads."))

    def pixels(idx: np.ndarray) -> torch.Tensor:
        device = next(multi.parameters()).device
        return processor(images=[samples[i].load_image() for i in idx], return_tensors="pt")["pixel_values"].to(device)

    def loss_on(module, idx: np.ndarray) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        for layer, (logits, boxes) in module.all_exits(pixels(idx)).items():
            set_loss = criterion(logits, boxes, [targets[i] for i in idx])["loss"]
            distill = distillation_loss(logits, boxes, final_logits[idx], final_boxes[idx])["loss"]
            parts[f"set_L{layer}"], parts[f"distill_L{layer}"] = set_loss, distill
        total = sum(set_weight * v for key, v in parts.items() if key.startswith("set_"))
        total = total + sum(distill_weight * v for key, v in parts.items() if key.startswith("distill_"))
        return {"loss": total, **parts}

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(train)
        return (order[i : i + batch_size] for i in range(0, len(order), batch_size))

    def holdout_loss(module) -> float:
        return float(
            np.mean(
                [
                    float(loss_on(module, holdout[i : i + batch_size])["loss"])
                    for i in range(0, len(holdout), batch_size)
                ]
            )
        )

    torch.manual_seed(seed)
    history = fit(
        multi, batches, loss_on, holdout_loss, epochs, lr, desc=f"fine-tune {len(chosen)} blocks", progress=progress
    )
    for param in multi.parameters():
        param.requires_grad_(False)
    return chosen, history
