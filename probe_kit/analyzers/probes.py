"""Detection probes on cached det tokens: linear and YOLOS-shaped MLP heads, DETR set loss, COCO mAP.

Trained on the training images, early-stopped on a held-out part of them, scored on validation
images only (split by sequence, never by random frames of one sequence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from probe_kit.analyzers._registry import AnalyzerResult, register
from probe_kit.cache.reader import FeatureCache
from probe_kit.models.heads import DetectionHead, Standardize
from probe_kit.ops.set_loss import SetCriterion
from probe_kit.options import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt
from probe_kit.training.data import (
    apply_in_chunks,
    box_targets,
    headline,
    iter_batches,
    load_cache_model,
    make_split,
    options_json,
    score,
)
from probe_kit.training.fit import fit


def _standardizer(cache: FeatureCache, layer: int, indices: np.ndarray, chunk: int = 2048) -> Standardize:
    """Per-dimension mean/std of the training images' det tokens, accumulated chunk by chunk."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(indices), chunk):
        feats = cache.read(layer, "det", indices[start : start + chunk]).astype(np.float64)
        flat = feats.reshape(-1, feats.shape[-1])
        total, total_sq, count = total + flat.sum(0), total_sq + (flat**2).sum(0), count + len(flat)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
    return Standardize(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))


@dataclass(frozen=True)
class ProbeOptions:
    val_fraction: Fraction = 0.3
    val_sequences: tuple[str, ...] = ()
    epochs: PositiveInt = 40
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 32
    init_from_head: bool = False  # start from the model's pretrained head (MLP probes only)
    no_object_weight: NonNegativeFloat = 0.1


def train_probe(cache: FeatureCache, layer: int, kind: str, seed: int = 0, opts: ProbeOptions = ProbeOptions()):
    """Train one probe on ``layer``; returns ``(head, person_index, split, samples, history)``."""
    samples = cache.samples()
    split = make_split(samples, opts.val_fraction, val_sequences=opts.val_sequences)
    torch.manual_seed(seed)
    if opts.init_from_head:
        model = load_cache_model(cache)
        if kind == "linear":
            raise ValueError("--init-from-head: the pretrained head is an MLP; use probe-mlp")
        head, person = DetectionHead.from_model(model), cache.person_index()
        num_classes = model.config.num_labels
    else:
        norm = _standardizer(cache, layer, split.train) if kind == "linear" else None
        dim = cache.read(layer, "det", slice(0, 1)).shape[-1]
        head, person, num_classes = DetectionHead.fresh(dim, 2, kind, norm), 0, 1
    criterion = SetCriterion(num_classes=num_classes, eos_coef=opts.no_object_weight)
    targets = box_targets(samples, person)

    def batches(epoch):
        rng = np.random.default_rng([seed, layer, epoch])
        return iter_batches(cache, layer, "det", split.train, opts.batch_size, rng)

    def loss_fn(module, batch):
        idx, feats = batch
        logits, boxes = module(feats)
        return criterion(logits, boxes, [targets[i] for i in idx])

    def holdout(module):
        logits, boxes = apply_in_chunks(module, cache, layer, "det", split.holdout)
        return float(criterion(logits, boxes, [targets[i] for i in split.holdout])["loss"])

    history = fit(head, batches, loss_fn, holdout, opts.epochs, opts.lr, desc=f"probe-{kind} L{layer}")
    return head, person, split, samples, history


def _run(kind: str, cache: FeatureCache, layers: tuple[int, ...], seed: int, **options) -> AnalyzerResult:
    opts = ProbeOptions(**{k: tuple(v) if k == "val_sequences" else v for k, v in options.items()})
    per_layer, histories, split_info = {}, {}, None
    for layer in layers:
        head, person, split, samples, history = train_probe(cache, layer, kind, seed, opts)
        logits, boxes = apply_in_chunks(head, cache, layer, "det", split.val)
        per_layer[layer] = headline(score(logits, boxes, [samples[i] for i in split.val], person))
        per_layer[layer]["epochs_trained"] = len(history)
        histories[str(layer)] = history
        split_info = split.describe(samples)
    return AnalyzerResult(
        f"probe-{kind}",
        options_json(asdict(opts)),
        seed,
        per_layer,
        cache.fingerprint,
        extra={"split": split_info, "training": histories},
    )


@register(
    "probe-linear",
    "affine maps from standardised det tokens to class + box, set loss, COCO mAP",
    ProbeOptions,
    role="readout",
    metrics={"AP50": "probe-linear AP50", "AP": "probe-linear AP (0.5:0.95)"},
)
def run_linear(cache: FeatureCache, layers: tuple[int, ...], seed: int = 0, **options) -> AnalyzerResult:
    return _run("linear", cache, layers, seed, **options)


@register(
    "probe-mlp",
    "YOLOS-shaped 3-layer MLP heads on det tokens, set loss, COCO mAP",
    ProbeOptions,
    role="readout",
    metrics={"AP50": "probe-mlp AP50", "AP": "probe-mlp AP (0.5:0.95)"},
)
def run_mlp(cache: FeatureCache, layers: tuple[int, ...], seed: int = 0, **options) -> AnalyzerResult:
    return _run("mlp", cache, layers, seed, **options)
