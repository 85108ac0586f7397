"""Training exit heads on cached det tokens (and, optionally, the blocks before each exit on live images).

Intermediate heads are trained with the DETR set loss against ground truth plus distillation
towards the final layer's cached outputs, each early-stopped on held-out images. The model is
rebuilt from the cache's model record (``models/record.py``), never from a name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from probe_kit import distributed
from probe_kit.cache.reader import FeatureCache
from probe_kit.data.sample import Sample
from probe_kit.errors import UserError
from probe_kit.heads.exits import ExitHeads
from probe_kit.heads.finetune import finetune_blocks
from probe_kit.heads.multi_exit import MultiExitYolos
from probe_kit.heads.store import exits_provenance, save_exits
from probe_kit.models.record import load_recorded
from probe_kit.ops.distill import distillation_loss
from probe_kit.ops.set_loss import SetCriterion
from probe_kit.options import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    check_instance,
)
from probe_kit.training.data import SPLIT_GAP, box_targets, cache_record, iter_batches, make_split
from probe_kit.training.fit import fit


@dataclass(frozen=True)
class ExitTraining:
    epochs: PositiveInt = 30
    lr: PositiveFloat = 5e-4
    batch_size: PositiveInt = 32
    set_weight: NonNegativeFloat = 1.0  # DETR set loss against ground truth
    distill_weight: NonNegativeFloat = 1.0  # distillation towards the final layer
    val_fraction: Fraction = 0.3
    val_sequences: tuple[str, ...] = ()
    split_gap: Annotated[float, Range(0, 1, max_open=True)] = SPLIT_GAP  # share of a sequence's frames left out
    train_last: bool = False  # also train the final layer's head (default: keep the model's own)
    finetune_blocks: NonNegativeInt = 0  # then fine-tune the k blocks before each exit jointly, on live images
    finetune_epochs: PositiveInt = 3
    finetune_lr: PositiveFloat = 1e-5

    def __post_init__(self) -> None:
        check_instance(self)  # typed and in range however it was built (CLI, YAML, Python)
        if self.set_weight == 0 and self.distill_weight == 0:
            raise UserError(
                "set_weight (--set-weight) and distill_weight (--distill-weight) are both 0: no loss to train"
            )


def train_exit_heads(
    cache_path: Path,
    layers: tuple[int, ...],
    out: Path,
    seed: int = 0,
    opts: ExitTraining = ExitTraining(),
    progress: bool = True,
    device: str = "cpu",
) -> Path:
    """Train exit heads for ``layers`` on a cache; writes a loadable exits folder into ``out``.

    ``device`` is where the model runs (block fine-tuning); heads train on cached tokens on the CPU.
    """
    with FeatureCache(cache_path) as cache:
        depth = cache.model["config"]["num_hidden_layers"]
        missing = [k for k in layers if k not in cache.layers]
        if missing:
            raise ValueError(f"{cache_path}: layers {missing} are not in the cache (cached: {list(cache.layers)})")
        if depth not in layers:
            layers = tuple(sorted(layers)) + (depth,)  # the full model is always the last exit
        samples = cache.samples()
        split = make_split(samples, opts.val_fraction, val_sequences=opts.val_sequences, gap=opts.split_gap)
        model, processor = load_recorded(cache_record(cache), "cpu", str(cache.path))
        person = cache.person_index()
        final_logits, final_boxes = (torch.from_numpy(a) for a in cache.final_outputs())
        targets = box_targets(samples, person)
        criterion = SetCriterion(num_classes=model.config.num_labels)
        heads = ExitHeads.from_model(model, layers)
        histories = {}
        for layer in layers:
            if layer == depth and not opts.train_last:
                continue
            torch.manual_seed(seed)
            head = heads.heads[str(layer)]

            def loss_on(module, idx, feats):
                logits, boxes = module(feats)
                set_parts = criterion(logits, boxes, [targets[i] for i in idx])
                distill = distillation_loss(logits, boxes, final_logits[idx], final_boxes[idx])
                total = opts.set_weight * set_parts["loss"] + opts.distill_weight * distill["loss"]
                return {
                    "loss": total,
                    **{f"set_{k}": v for k, v in set_parts.items() if k != "loss"},
                    **{f"distill_{k}": v for k, v in distill.items() if k != "loss"},
                }

            def batches(epoch, layer=layer):
                rng = np.random.default_rng([seed, layer, epoch])
                return iter_batches(cache, layer, "det", split.train, opts.batch_size, rng)

            def holdout(module, layer=layer):
                idx = split.holdout
                return float(loss_on(module, idx, torch.from_numpy(cache.read(layer, "det", idx)))["loss"])

            histories[str(layer)] = fit(
                head,
                batches,
                lambda m, b: loss_on(m, *b),
                holdout,
                opts.epochs,
                opts.lr,
                desc=f"exit head L{layer}",
                progress=progress,
            )
        finetuned, finetune_history = [], []
        if opts.finetune_blocks > 0:
            live = live_dataset(cache, samples)
            multi = MultiExitYolos(model, heads, person).to(device)
            finetuned, finetune_history = finetune_blocks(
                multi,
                processor,
                live,
                split.train,
                split.holdout,
                [{k: v.to(device) for k, v in t.items()} for t in targets],
                final_logits.to(device),
                final_boxes.to(device),
                criterion.to(device),
                opts.finetune_blocks,
                opts.finetune_epochs,
                opts.finetune_lr,
                opts.batch_size,
                opts.set_weight,
                opts.distill_weight,
                seed,
                progress,
            )
            multi.to("cpu")
        config = {
            "layers": list(layers),
            "finetuned_blocks": finetuned,
            "finetune_history": finetune_history,
            "finetune_processes": distributed.world_size() if finetuned else None,  # effective batch: batch_size
            **exits_provenance(cache, samples, split),
            "seed": seed,
            "training": {**asdict(opts), "val_sequences": list(opts.val_sequences)},
            "history": histories,
        }
    blocks = {
        k: v for k, v in model.state_dict().items() if any(k.startswith(f"vit.encoder.layer.{i}.") for i in finetuned)
    }
    # Under torchrun with --finetune-blocks every rank holds the same all-reduced weights; rank 0 saves them.
    return distributed.on_rank_zero(lambda: save_exits(heads, config, out, blocks))


def live_dataset(cache: FeatureCache, samples: list[Sample]) -> list[Sample]:
    """The cache's images reloaded for live fine-tuning; refused, naming the first changed file, if the data changed."""
    live = cache.load_dataset()
    if [s.image_id for s in live] != [s.image_id for s in samples]:
        raise ValueError(f"{cache.path}: the dataset on disk no longer matches the cache; cannot fine-tune")
    return live
