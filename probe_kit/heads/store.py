"""The exits folder: ``config.json`` + ``heads.safetensors`` (+ ``blocks.safetensors``), saved and loaded.

``config.json`` records the exit layers, the head type (``head``: ``det``, the default when absent,
or ``dense``: ``heads/dense_exit.py``), the base model's record (``base_model``: checkpoint,
weights fingerprint, dtype, image processor class and config, see ``models/record.py``), the cache,
which images trained and early-stopped the heads (``train_image_ids``, ``holdout_image_ids``), the
training options and per-epoch losses. ``load_exits`` rebuilds the base model from that record, so
exits are evaluated at the input size their tokens were cached at.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probe_kit.cache.reader import FeatureCache
from probe_kit.data.sample import Sample
from probe_kit.heads.dense_exit import DenseExitHeads
from probe_kit.heads.exits import ExitHeads
from probe_kit.models.record import ModelRecord, load_recorded
from probe_kit.training.data import Split, cache_record

HEAD_TYPES = {"det": ExitHeads, "dense": DenseExitHeads}  # config.json "head" (absent: det)


def exits_provenance(cache: FeatureCache, samples: Sequence[Sample], split: Split) -> dict:
    """What an exits folder records about its inputs: the model record, the cache and the images used."""
    described = split.describe(samples)
    return {
        "base_model": cache_record(cache).to_json(),
        "cache": str(Path(cache.path).resolve()),
        "cache_fingerprint": cache.fingerprint,
        "train_image_ids": described["train_image_ids"],
        "holdout_image_ids": described["holdout_image_ids"],
        "split": described,
    }


def save_exits(heads: torch.nn.Module, config: dict, out: Path, blocks: dict[str, torch.Tensor] | None = None) -> Path:
    """``heads.safetensors`` + ``config.json`` (+ ``blocks.safetensors``: fine-tuned blocks over the base)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, out / "heads.safetensors")
    if blocks:
        save_file({k: v.contiguous() for k, v in blocks.items()}, out / "blocks.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def read_exits_config(folder: Path) -> dict:
    """``config.json`` of an exits folder, checked for the keys loading needs (one-line errors)."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: not an exits folder (no config.json; make one with `probe-kit train-exits`)"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")  # noqa: TRY004 (user input: ValueError by house rule)
    for key in ("base_model", "layers"):
        if key not in config:
            raise ValueError(f"{path}: no {key!r}; not an exits config written by `probe-kit train-exits`")
    layers = config["layers"]
    if not isinstance(layers, list) or not layers or not all(isinstance(k, int) and k > 0 for k in layers):
        raise ValueError(f"{path}: layers: expected a list of positive layer numbers, got {layers!r}")
    for key, may_be_empty in (("train_image_ids", False), ("holdout_image_ids", True)):
        ids = config.get(key, [])  # absent: refused where held-out images are needed (heads/evaluate.held_out)
        integers = isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        if not integers or (key in config and not ids and not may_be_empty):
            what = "a list of image ids (integers)" if may_be_empty else "a non-empty list of image ids (integers)"
            raise ValueError(f"{path}: {key}: expected {what}, got {str(ids)[:60]}")
    return config


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def load_exits(folder: Path, device: str = "cpu"):
    """``(model, processor, heads, config)`` of a saved exits folder, on ``device``.

    The model and its image processor are rebuilt from the recorded ``base_model``; refused, in one
    line, when its weights changed, when the heads do not fit it, or when a file is missing.
    """
    folder = Path(folder)
    config = read_exits_config(folder)
    where = str(folder / "config.json")
    record = ModelRecord.from_json(config["base_model"], f"{where}: base_model")
    heads_state = _tensors(folder / "heads.safetensors")
    blocks = _tensors(folder / "blocks.safetensors") if config.get("finetuned_blocks") else None
    model, processor = load_recorded(record, device, f"{where}: base_model")
    depth = model.config.num_hidden_layers
    if max(config["layers"]) > depth:
        raise ValueError(f"{where}: layers {config['layers']} exceed {record.name}'s {depth} blocks")
    if blocks is not None:
        expected = model.state_dict()
        bad = [k for k, v in blocks.items() if k not in expected or expected[k].shape != v.shape]
        if bad:
            raise ValueError(f"{folder / 'blocks.safetensors'}: tensors {bad[:3]} do not fit {record.name}")
        model.load_state_dict(blocks, strict=False)
    kind = config.get("head", "det")
    if kind not in HEAD_TYPES:
        raise ValueError(f"{where}: head: expected one of {sorted(HEAD_TYPES)}, got {kind!r}")
    heads = HEAD_TYPES[kind].from_model(model, tuple(config["layers"]))
    try:
        heads.load_state_dict(heads_state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(
            f"{folder / 'heads.safetensors'}: the heads do not fit {record.name} at layers {config['layers']} ({first})"
        ) from None
    heads.to(device).eval()
    return model, processor, heads, config
