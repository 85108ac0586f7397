"""Training exit heads of any registered type: on cached tokens, then optionally with the blocks before them.

1. **Heads on the cache.** Each trained exit's head learns from the tokens its type reads
   (``ExitHead.token_role``) with the type's loss (ground truth + distillation towards the original
   model's cached final outputs), early-stopped on held-out images (``training/fit.py``).
2. **Blocks** (``finetune_blocks > 0``): the k blocks before each exit and the heads, jointly, on live
   images (``heads/finetune.py``; data-parallel under torchrun).

The model is rebuilt from the cache's model record (``models/record.py``), never from a name. Rank 0
alone saves; the folder records which images trained and early-stopped the heads.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from probe_kit import distributed
from probe_kit.cache.reader import FeatureCache
from probe_kit.heads.finetune import FineTuning, depth_weights, finetune_blocks
from probe_kit.heads.interface import ExitHead, TrainingTargets
from probe_kit.heads.options import ExitTraining
from probe_kit.heads.registry import head_type
from probe_kit.heads.store import ExitsConfig, save_exits
from probe_kit.models.record import load_recorded
from probe_kit.ops.boxes import xywh_to_cxcywh_norm
from probe_kit.training.data import (
    Split,
    apply_in_chunks,
    box_targets,
    cache_record,
    iter_batches,
    make_split,
)
from probe_kit.training.fit import fit


def train_exits(
    cache_path: Path,
    layers: tuple[int, ...],
    out: Path,
    head: str = "det",
    seed: int = 0,
    opts: ExitTraining | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Train ``head`` exit heads (a ``HEAD_TYPES`` name) for ``layers`` on a cache; writes an exits folder.

    ``device`` is where the model runs (block fine-tuning); heads train on cached tokens on the CPU.
    """
    cls, opts = head_type(head), opts or ExitTraining()
    with FeatureCache(cache_path) as cache:
        missing = [k for k in layers if k not in cache.layers]
        if missing:
            raise ValueError(f"{cache_path}: layers {missing} are not in the cache (cached: {list(cache.layers)})")
        samples = cache.samples()
        split = make_split(samples, opts.val_fraction, val_sequences=opts.val_sequences, gap=opts.split_gap)
        model, processor = load_recorded(cache_record(cache), "cpu", str(cache.path))
        depth = model.config.num_hidden_layers
        if opts.regime == "joint" and depth not in layers:  # the final layer's own loss keeps the full model
            if depth not in cache.layers:
                raise ValueError(f"{cache_path}: --regime joint trains the final layer {depth} too; cache it")
            layers = (*layers, depth)
        torch.manual_seed(seed)  # fresh heads (e.g. dense) start from the seed, not from whatever ran before
        heads = cls.from_model(model, layers)
        heads.validate(cache.tokens, str(cache_path))
        targets = training_targets(cache, samples, model.config.num_labels, opts)
        if opts.det_tokens is not None:
            heads.use_det_tokens(most_matched_tokens(heads, targets, split.train, opts.det_tokens), "--det-tokens")
        histories = {
            str(k): _fit_on_cache(heads, cache, k, split, targets, opts, seed, progress)
            for k in heads.trained_layers(opts.train_last)
        }
        finetuned, finetune_history, distill_history = [], [], []
        if opts.regime != "frozen":
            live = live_dataset(cache, samples)
            tuning = _fine_tuning(opts, heads, depth, seed, progress)
            finetuned, finetune_history = finetune_blocks(model, processor, heads, live, split, targets, tuning, device)
        if opts.self_distill_epochs:
            distill_history = self_distill(model, processor, heads, live, split, targets, opts, seed, progress, device)
        config = ExitsConfig(
            layers=heads.layers,
            head=cls.name,
            **_provenance(cache, samples, split),
            seed=seed,
            training=opts.to_json(),
            history=histories,
            finetuned_blocks=tuple(finetuned),
            finetune_history=tuple(finetune_history),
            finetune_processes=distributed.world_size() if finetuned else None,  # effective batch: batch_size
            det_token_indices=heads.det_token_indices,
            self_distill_history=tuple(distill_history),
        )
    blocks = {
        k: v for k, v in model.state_dict().items() if any(k.startswith(f"vit.encoder.layer.{i}.") for i in finetuned)
    }
    # Under torchrun with --finetune-blocks every rank holds the same all-reduced weights; rank 0 saves them.
    return distributed.on_rank_zero(lambda: save_exits(heads, config, out, blocks))


def most_matched_tokens(heads: ExitHead, targets: TrainingTargets, train: np.ndarray, k: int) -> tuple[int, ...]:
    """The ``k`` detection tokens the final layer's outputs match to ground truth most often on the training images
    ``train`` (transformers' Hungarian matcher, the set loss's own), ties to the lower index; ascending."""
    if heads.name != "det":
        raise ValueError(
            f"--det-tokens: applies to det heads (their loss reads the teacher's tokens), not {heads.name!r}"
        )
    if k > heads.num_det:
        raise ValueError(
            f"--det-tokens {k}: the model has {heads.num_det} detection tokens; expected 1 to {heads.num_det}"
        )
    matcher = targets.criterion().loss.matcher
    counts = np.zeros(heads.num_det, dtype=np.int64)
    for lo in range(0, len(train), 256):
        rows = train[lo : lo + 256]
        outputs = {"logits": targets.final_logits[rows], "pred_boxes": targets.final_boxes[rows]}
        with torch.no_grad():
            for queries, _ in matcher(outputs, [targets.boxes[i] for i in rows]):
                np.add.at(counts, np.asarray(queries, dtype=np.int64), 1)
    order = sorted(range(heads.num_det), key=lambda i: (-counts[i], i))
    return tuple(sorted(order[:k]))


def self_distill(
    model, processor, heads: ExitHead, live: list, split: Split, targets: TrainingTargets, opts: ExitTraining,
    seed: int, progress: bool, device: str,
) -> list[dict]:  # fmt: skip
    """LGViT's second stage: the backbone just trained jointly is frozen and its own final layer becomes the
    teacher; the heads of the earlier exits alone train towards it (distillation only), and the epoch with the best
    holdout AP50 of those exits is kept. Returns the stage's per-epoch history."""
    teacher_logits, teacher_boxes = _final_outputs(model, processor, live, opts.batch_size, device)
    taught = replace(
        targets, final_logits=teacher_logits, final_boxes=teacher_boxes, set_weight=0.0, distill_weight=1.0
    )
    depth = model.config.num_hidden_layers
    weights = {k: float(k != depth) for k in heads.layers}  # the last exit is the teacher: weight 0, never moved
    tuning = FineTuning(
        0, opts.self_distill_epochs, opts.finetune_lr, opts.batch_size, seed, progress, weights, select_by="AP50"
    )
    return finetune_blocks(model, processor, heads, live, split, taught, tuning, device)[1]


def _final_outputs(model, processor, samples: list, batch_size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own final-layer logits and boxes for every sample, in order (the self-distillation teacher)."""
    from probe_kit.models.runner import run_batches

    model.to(device)
    logits, boxes = [], []
    for batch in run_batches(model, processor, samples, batch_size):
        logits.append(batch.outputs.logits.float().cpu())
        boxes.append(batch.outputs.pred_boxes.float().cpu())
    model.to("cpu")
    return torch.cat(logits), torch.cat(boxes)


def _fine_tuning(opts: ExitTraining, heads: ExitHead, depth: int, seed: int, progress: bool) -> FineTuning:
    """The live stage of a regime: ``finetune``, the k blocks before each exit, every exit's loss counted once,
    the lowest holdout loss kept; ``joint``, every block up to the last exit, exit losses weighted by depth,
    the epoch with the best holdout AP50 kept."""
    common = {"epochs": opts.finetune_epochs, "lr": opts.finetune_lr, "batch_size": opts.batch_size, "seed": seed}
    if opts.regime == "finetune":
        return FineTuning(opts.finetune_blocks, progress=progress, **common)
    weights = depth_weights(heads.layers, depth)
    return FineTuning(max(heads.finetuned_exits()), progress=progress, exit_weights=weights, select_by="AP50", **common)


def _provenance(cache: FeatureCache, samples: list, split: Split) -> dict:
    """What an exits folder records about its inputs: the model record, the cache and the images used."""
    hashes = cache.image_hashes()
    return {
        "base_model": cache_record(cache).to_json(),
        "train_image_ids": tuple(int(samples[i].image_id) for i in split.train),
        "holdout_image_ids": tuple(int(samples[i].image_id) for i in split.holdout),
        "train_image_sha256": tuple(hashes[i] for i in split.train),
        "holdout_image_sha256": tuple(hashes[i] for i in split.holdout),
        "cache": str(Path(cache.path).resolve()),
        "cache_fingerprint": cache.fingerprint,
        "split": split.describe(samples),
    }


def training_targets(cache: FeatureCache, samples: list, num_labels: int, opts: ExitTraining) -> TrainingTargets:
    """Ground truth and the original model's cached final outputs (the teacher) of every cached image."""
    person = cache.person_index()
    final_logits, final_boxes = (torch.from_numpy(a) for a in cache.final_outputs())
    return TrainingTargets(
        boxes=box_targets(samples, person),
        final_logits=final_logits,
        final_boxes=final_boxes,
        gt_xywh=[xywh_to_cxcywh_norm(s.boxes, s.width, s.height).astype(np.float32) for s in samples],
        grid=(cache.layout.grid_h, cache.layout.grid_w),
        person_index=person,
        num_labels=num_labels,
        set_weight=opts.set_weight,
        distill_weight=opts.distill_weight,
    )


def _fit_on_cache(
    heads: ExitHead,
    cache: FeatureCache,
    layer: int,
    split: Split,
    targets: TrainingTargets,
    opts: ExitTraining,
    seed: int,
    progress: bool,
) -> list[dict]:
    """Train exit ``layer``'s head on its cached tokens; early-stopped on the holdout images' loss."""
    role, loss = heads.token_role(layer), heads.loss(targets)
    torch.manual_seed(seed)

    def batches(epoch: int):
        rng = np.random.default_rng([seed, layer, epoch])
        return iter_batches(cache, layer, role, split.train, opts.batch_size, rng)

    def holdout(module) -> float:
        outputs = apply_in_chunks(module, cache, layer, role, split.holdout)
        return float(loss(layer, outputs, split.holdout)["loss"])

    return fit(
        heads.exit_module(layer),
        batches,
        lambda module, batch: loss(layer, module(batch[1]), batch[0]),
        holdout,
        opts.epochs,
        opts.lr,
        desc=f"{heads.name} exit head L{layer}",
        progress=progress,
    )


def live_dataset(cache: FeatureCache, samples: list) -> list:
    """The cache's images reloaded for live fine-tuning; refused, naming the first changed file, if the data changed."""
    live = cache.load_dataset()
    if [s.image_id for s in live] != [s.image_id for s in samples]:
        raise ValueError(f"{cache.path}: the dataset on disk no longer matches the cache; cannot fine-tune")
    return live
