"""Training dense exit heads (``heads/dense_exit.py``) on cached patch tokens, optionally with the blocks before them.

Each dense head is trained with ``dense_loss`` against the ground truth plus, as distillation, the
same loss against the final layer's kept detections (person probability >= ``KEEP_SCORE``) turned
into per-patch targets by ``dense_targets``: the teacher's boxes are what an exit has to agree with
to let an image leave early (the gate's target), so they are trained towards directly. Weights:
``ExitTraining.set_weight`` (ground truth) and ``distill_weight``, as for det heads.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from probe_kit.cache.reader import FeatureCache
from probe_kit.heads.dense_exit import DENSE_KIND, DenseExitHeads, all_exit_outputs
from probe_kit.heads.finetune import blocks_before_exits
from probe_kit.heads.policies import KEEP_SCORE
from probe_kit.heads.store import exits_provenance, save_exits
from probe_kit.heads.train import ExitTraining, live_dataset
from probe_kit.models.predict import person_scores
from probe_kit.models.record import load_recorded
from probe_kit.ops.boxes import xywh_to_cxcywh_norm
from probe_kit.ops.dense import dense_loss, dense_targets
from probe_kit.ops.distill import distillation_loss
from probe_kit.ops.set_loss import SetCriterion
from probe_kit.training.data import apply_in_chunks, box_targets, cache_record, iter_batches, make_split
from probe_kit.training.fit import fit


def _kept_final_boxes(final_logits: np.ndarray, final_boxes: np.ndarray, person_index: int) -> list[np.ndarray]:
    """The final layer's kept boxes per image ([n_i, 4] normalised cx, cy, w, h): the distillation target."""
    scores = person_scores(torch.from_numpy(final_logits), person_index).numpy()
    return [b[s >= KEEP_SCORE] for s, b in zip(scores, final_boxes)]


def train_dense_exits(
    cache_path: Path,
    layers: tuple[int, ...],
    out: Path,
    seed: int = 0,
    opts: ExitTraining | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Train dense exit heads for the intermediate ``layers`` on cached patch tokens; writes an exits folder.

    ``device`` is where the model runs (block fine-tuning); heads train on cached tokens on the CPU.
    """
    opts = opts or ExitTraining()
    with FeatureCache(cache_path) as cache:
        depth = cache.model["config"]["num_hidden_layers"]
        if "patch" not in cache.tokens:
            raise ValueError(f"{cache_path}: --head dense needs patch tokens (cache with --tokens det,patch)")
        missing = [k for k in layers if k not in cache.layers]
        if missing:
            raise ValueError(f"{cache_path}: layers {missing} are not in the cache (cached: {list(cache.layers)})")
        intermediate = tuple(sorted(k for k in set(layers) if k != depth))
        if not intermediate:
            raise ValueError(f"--layers {list(layers)}: a dense exit needs an intermediate layer (below {depth})")
        model, processor = load_recorded(cache_record(cache), "cpu", str(cache.path))
        person = cache.person_index()
        samples = cache.samples()
        split = make_split(samples, opts.val_fraction, val_sequences=opts.val_sequences, gap=opts.split_gap)
        grid = (cache.layout.grid_h, cache.layout.grid_w)
        gt = dense_targets([xywh_to_cxcywh_norm(s.boxes, s.width, s.height).astype(np.float32) for s in samples], grid)
        teacher = dense_targets(_kept_final_boxes(*cache.final_outputs(), person), grid)
        heads = DenseExitHeads.from_model(model, intermediate)
        histories = {}
        for layer in intermediate:
            torch.manual_seed(seed)

            def batches(epoch, layer=layer):
                rng = np.random.default_rng([seed, layer, epoch])
                return iter_batches(cache, layer, "patch", split.train, opts.batch_size, rng)

            def holdout(module, layer=layer):
                pred = apply_in_chunks(module, cache, layer, "patch", split.holdout, chunk=256)
                return float(dense_exit_loss(pred, split.holdout, gt, teacher, opts)["loss"])

            histories[str(layer)] = fit(
                heads.dense[str(layer)],
                batches,
                lambda m, b: dense_exit_loss(m(b[1]), b[0], gt, teacher, opts),
                holdout,
                opts.epochs,
                opts.lr,
                desc=f"dense exit L{layer}",
                progress=progress,
            )
        finetuned, finetune_history = [], []
        if opts.finetune_blocks > 0:
            live = live_dataset(cache, samples)
            final = tuple(torch.from_numpy(a).to(device) for a in cache.final_outputs())
            targets = [{k: v.to(device) for k, v in t.items()} for t in box_targets(samples, person)]
            joint = _Joint(model, heads).to(device)
            finetuned, finetune_history = _finetune(
                joint, processor, live, split, (gt, teacher), targets, final, opts, seed, progress
            )
            joint.to("cpu")
        config = {
            "head": "dense",
            "dense_kind": DENSE_KIND,
            "layers": list(heads.layers),
            "finetuned_blocks": finetuned,
            "finetune_history": finetune_history,
            **exits_provenance(cache, samples, split),
            "seed": seed,
            "training": {**asdict(opts), "val_sequences": list(opts.val_sequences)},
            "history": histories,
        }
    blocks = {
        k: v for k, v in model.state_dict().items() if any(k.startswith(f"vit.encoder.layer.{i}.") for i in finetuned)
    }
    return save_exits(heads, config, out, blocks)


def dense_exit_loss(
    pred: torch.Tensor, idx: np.ndarray, gt: tuple, teacher: tuple, opts: ExitTraining
) -> dict[str, torch.Tensor]:
    """``set_weight`` x dense loss vs ground truth + ``distill_weight`` x dense loss vs the final layer's
    kept detections; ``pred [b, P, 5]`` for the images ``idx``; ``gt``/``teacher``: ``dense_targets`` of all."""
    truth = dense_loss(pred, gt[0][idx], gt[1][idx])
    distill = dense_loss(pred, teacher[0][idx], teacher[1][idx])
    total = opts.set_weight * truth["loss_dense"] + opts.distill_weight * distill["loss_dense"]
    return {
        "loss": total,
        **{f"gt_{k}": v for k, v in truth.items() if k != "loss_dense"},
        **{f"distill_{k}": v for k, v in distill.items() if k != "loss_dense"},
    }


class _Joint(nn.Module):
    """Model + dense heads as one module, so ``fit`` trains the chosen blocks and the heads together."""

    def __init__(self, model, heads: DenseExitHeads) -> None:
        super().__init__()
        self.model, self.heads = model, heads

    def forward(self, pixel_values: torch.Tensor) -> dict[int, object]:
        return all_exit_outputs(self.model, self.heads, pixel_values)


def _finetune(
    joint: _Joint, processor, live, split, dense_targets_, targets, final, opts: ExitTraining, seed, progress
):
    """Fine-tune the ``opts.finetune_blocks`` blocks before each dense exit with the dense heads, on live
    images. The chosen blocks also feed the final layer, so its outputs are held to the original
    model's (cached ``final``) by distillation plus the set loss against ground truth."""
    heads = joint.heads
    criterion = SetCriterion(num_classes=joint.model.config.num_labels).to(final[0].device)
    chosen = blocks_before_exits(heads.layers[:-1], opts.finetune_blocks)
    for name, param in joint.named_parameters():
        param.requires_grad_(any(name.startswith(f"model.vit.encoder.layer.{i}.") for i in chosen) or ".dense." in name)
    gt, teacher = dense_targets_
    device = final[0].device

    def loss_on(module, idx: np.ndarray) -> dict[str, torch.Tensor]:
        pixels = processor(images=[live[i].load_image() for i in idx], return_tensors="pt")["pixel_values"]
        outputs = module(pixels.to(device))
        on = lambda pair: tuple(t[idx].to(device) for t in pair)
        parts = {
            f"dense_L{k}": dense_exit_loss(outputs[k].cpu(), idx, gt, teacher, opts)["loss"].to(device)
            for k in heads.layers[:-1]
        }
        logits, boxes = outputs[heads.depth]
        parts["final_set"] = criterion(logits, boxes, [targets[i] for i in idx])["loss"]
        parts["final_distill"] = distillation_loss(logits, boxes, *on(final))["loss"]
        return {"loss": sum(parts.values()), **parts}

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(split.train)
        return (order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size))

    def holdout_loss(module) -> float:
        chunks = [split.holdout[i : i + opts.batch_size] for i in range(0, len(split.holdout), opts.batch_size)]
        return float(np.mean([float(loss_on(module, c)["loss"]) for c in chunks]))

    torch.manual_seed(seed)
    history = fit(
        joint,
        batches,
        loss_on,
        holdout_loss,
        opts.finetune_epochs,
        opts.finetune_lr,
        desc=f"fine-tune {len(chosen)} blocks (dense)",
        progress=progress,
    )
    for param in joint.parameters():
        param.requires_grad_(False)
    return chosen, history
