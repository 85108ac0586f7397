"""Exit heads: YOLOS-shaped heads (LayerNorm + class/box MLPs) per exit layer, trained on cached tokens.

Each head starts as a copy of the pretrained head, so before training the exit at the last layer
reproduces the model's own output. Intermediate heads are trained with the DETR set loss against
ground truth plus distillation towards the final layer's outputs.

Saved as a folder: ``config.json`` (exit layers, the base checkpoint with its weights fingerprint,
the cache, training options and per-epoch loss components) + ``heads.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from probe_kit.cache.reader import FeatureCache
from probe_kit.models.heads import DetectionHead
from probe_kit.ops.distill import distillation_loss
from probe_kit.ops.set_loss import SetCriterion
from probe_kit.training.data import box_targets, iter_batches, load_cache_model, make_split
from probe_kit.training.fit import fit


@dataclass(frozen=True)
class ExitTraining:
    epochs: int = 30
    lr: float = 5e-4
    batch_size: int = 32
    set_weight: float = 1.0  # DETR set loss against ground truth
    distill_weight: float = 1.0  # distillation towards the final layer
    val_fraction: float = 0.3
    val_sequences: tuple[str, ...] = ()
    train_last: bool = False  # also train the final layer's head (default: keep the model's own)
    finetune_blocks: int = 0  # then fine-tune the k blocks before each exit jointly, on live images
    finetune_epochs: int = 3
    finetune_lr: float = 1e-5


class ExitHeads(nn.Module):
    """One ``DetectionHead`` per exit layer."""

    def __init__(self, heads: dict[int, DetectionHead]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({str(k): v for k, v in sorted(heads.items())})

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(int(k) for k in self.heads))

    def forward(self, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads[str(layer)](tokens)

    @classmethod
    def from_model(cls, model, layers: tuple[int, ...]) -> "ExitHeads":
        return cls({layer: DetectionHead.from_model(model) for layer in layers})


def train_exit_heads(
    cache_path: Path,
    layers: tuple[int, ...],
    out: Path,
    seed: int = 0,
    opts: ExitTraining = ExitTraining(),
    progress: bool = True,
) -> Path:
    """Train exit heads for ``layers`` on a cache; writes a loadable exits folder into ``out``."""
    with FeatureCache(cache_path) as cache:
        depth = cache.model["config"]["num_hidden_layers"]
        missing = [k for k in layers if k not in cache.layers]
        if missing:
            raise ValueError(f"{cache_path}: layers {missing} are not in the cache (cached: {list(cache.layers)})")
        if depth not in layers:
            layers = tuple(sorted(layers)) + (depth,)  # the full model is always the last exit
        model = load_cache_model(cache)
        person = cache.person_index()
        samples = cache.samples()
        split = make_split(samples, opts.val_fraction, val_sequences=opts.val_sequences)
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
            finetuned, finetune_history = _finetune(
                cache, model, heads, samples, split, targets, final_logits, final_boxes, criterion, opts, seed, progress
            )
        config = {
            "layers": list(layers),
            "finetuned_blocks": finetuned,
            "finetune_history": finetune_history,
            "base_model": {k: cache.model[k] for k in ("name", "revision", "fingerprint")},
            "cache": str(Path(cache_path).resolve()),
            "cache_fingerprint": cache.fingerprint,
            "seed": seed,
            "training": {**asdict(opts), "val_sequences": list(opts.val_sequences)},
            "history": histories,
            "split": split.describe(samples),
        }
    blocks = {
        k: v for k, v in model.state_dict().items() if any(k.startswith(f"vit.encoder.layer.{i}.") for i in finetuned)
    }
    return save_exits(heads, config, out, blocks)


def _finetune(
    cache,
    model,
    heads,
    samples,
    split,
    targets,
    final_logits,
    final_boxes,
    criterion,
    opts: ExitTraining,
    seed: int,
    progress: bool,
):
    from probe_kit.heads.finetune import finetune_blocks
    from probe_kit.heads.multi_exit import MultiExitYolos
    from probe_kit.models.loading import ModelSpec, load_yolos

    live = cache.data_spec().load()
    if [s.image_id for s in live] != [s.image_id for s in samples]:
        raise ValueError(f"{cache.path}: the dataset on disk no longer matches the cache; cannot fine-tune blocks")
    _, processor = load_yolos(ModelSpec(cache.model["name"], cache.model["revision"]))
    multi = MultiExitYolos(model, heads, cache.person_index())
    return finetune_blocks(
        multi,
        processor,
        live,
        split.train,
        split.holdout,
        targets,
        final_logits,
        final_boxes,
        criterion,
        opts.finetune_blocks,
        opts.finetune_epochs,
        opts.finetune_lr,
        opts.batch_size,
        opts.set_weight,
        opts.distill_weight,
        seed,
        progress,
    )


def save_exits(heads: ExitHeads, config: dict, out: Path, blocks: dict[str, torch.Tensor] | None = None) -> Path:
    """``heads.safetensors`` + ``config.json`` (+ ``blocks.safetensors``: fine-tuned blocks over the base)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, out / "heads.safetensors")
    if blocks:
        save_file({k: v.contiguous() for k, v in blocks.items()}, out / "blocks.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def load_exits(folder: Path):
    """``(model, processor, heads, config)`` of a saved exits folder; the base model's weights must match."""
    from probe_kit.cache.writer import weights_fingerprint
    from probe_kit.models.loading import ModelSpec, load_yolos

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "heads.safetensors").is_file():
        raise ValueError(f"{folder}: not an exits folder (expected config.json and heads.safetensors)")
    config = json.loads((folder / "config.json").read_text())
    base = config["base_model"]
    model, processor = load_yolos(ModelSpec(base["name"], base["revision"]))
    if weights_fingerprint(model) != base["fingerprint"]:
        raise ValueError(
            f"{folder}: heads were trained on weights {base['fingerprint']}, "
            f"{base['name']} now has {weights_fingerprint(model)}"
        )
    if config.get("finetuned_blocks"):
        missing, unexpected = model.load_state_dict(load_file(folder / "blocks.safetensors"), strict=False)
        if unexpected:
            raise ValueError(f"{folder}/blocks.safetensors: unexpected tensors {unexpected[:3]}")
    heads = ExitHeads.from_model(model, tuple(config["layers"]))
    heads.load_state_dict(load_file(folder / "heads.safetensors"))
    heads.eval()
    return model, processor, heads, config
