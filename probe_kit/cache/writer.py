"""Writing a feature cache: batched extraction, resumable, refusing to mix inputs.

The file is pre-sized for every image of the dataset; ``num_written`` (a root attribute,
flushed after each batch) says how far it got, and only a finished run sets ``complete``.
A re-run with the same identity (model, preprocessing, dataset, options) continues at
``num_written``; any difference is refused with a message naming it. One file per process,
merged later through an HDF5 virtual dataset, needs only a sample range per writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

from probe_kit.cache.schema import (
    ATTENTION_MAPS,
    FEATURE_DTYPES,
    IDENTITY_ATTRS,
    SCHEMA_VERSION,
    TOKEN_ROLES,
    TokenLayout,
    layer_path,
)
from probe_kit.data.sample import Sample
from probe_kit.data.spec import DataSpec
from probe_kit.distributed import shard_bounds
from probe_kit.models.layers import resolve_layers
from probe_kit.models.loading import ModelSpec, load_yolos
from probe_kit.models.record import ModelRecord
from probe_kit.models.runner import batch_bounds, input_size, run_batches
from probe_kit.ops.rollout import fuse_heads, rollout_layers


@dataclass(frozen=True)
class CacheOptions:
    layers: tuple[int, ...]
    tokens: tuple[str, ...] = ("det",)
    dtype: str = "float16"
    batch_size: int = 8
    attention: bool = False  # store det-token rollout and raw attention rows over the patches
    head_fusion: str = "mean"
    discard_ratio: float = 0.0

    def maps(self) -> tuple[str, ...]:
        return ATTENTION_MAPS if self.attention else ()


def package_versions() -> dict[str, str]:
    import transformers

    import probe_kit

    return {
        "probe_kit": probe_kit.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }


def _identity(model, processor, model_spec: ModelSpec, data_spec: DataSpec, options: CacheOptions) -> dict:
    return {
        **ModelRecord.of(model, processor, model_spec).cache_attrs(model.config.to_dict()),  # the model record
        "dataset": json.dumps(data_spec.describe(), sort_keys=True),
        "options": json.dumps(
            {
                "layers": list(options.layers),
                "tokens": list(options.tokens),
                "dtype": options.dtype,
                "batch_size": options.batch_size,
                "attention": options.attention,
                "head_fusion": options.head_fusion,
                "discard_ratio": options.discard_ratio,
            },
            sort_keys=True,
        ),
    }


def _check_identity(handle: h5py.File, identity: dict, path: Path) -> None:
    if handle.attrs.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: cache schema version {handle.attrs.get('schema_version')}, expected {SCHEMA_VERSION}; "
            "write a new cache"
        )
    for key in IDENTITY_ATTRS:
        if handle.attrs[key] != identity[key]:
            theirs, ours = json.loads(handle.attrs[key]), json.loads(identity[key])
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ValueError(f"{path}: refusing to append, {key} differs from the existing cache (fields {diff})")


def _layout(model, input_size: tuple[int, int]) -> TokenLayout:
    patch = model.config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return TokenLayout(model.config.num_detection_tokens, input_size[1] // patch, input_size[0] // patch)


def _create(
    handle: h5py.File, samples: Sequence[Sample], identity: dict, layout: TokenLayout, model, options: CacheOptions
) -> None:
    n = len(samples)
    handle.attrs.update(identity)
    handle.attrs["schema_version"] = SCHEMA_VERSION
    handle.attrs["layout"] = layout.to_json()
    handle.attrs["versions"] = json.dumps(package_versions())
    handle.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    handle.attrs["complete"] = False
    handle.attrs["num_written"] = 0
    strings = h5py.string_dtype()
    images = handle.create_group("images")
    images["image_id"] = np.array([s.image_id for s in samples], dtype=np.int64)
    images["file_name"] = np.array([s.file_name for s in samples], dtype=object).astype(strings)
    images["orig_size"] = np.array([(s.width, s.height) for s in samples], dtype=np.int32)
    images.create_dataset("input_size", (n, 2), dtype=np.int32)
    images["difficulty"] = np.array([s.meta.get("difficulty", "") for s in samples], dtype=object).astype(strings)
    ragged = h5py.vlen_dtype(np.float32)
    gt = handle.create_group("gt")
    for name, attr in (("boxes", "boxes"), ("ignore", "ignore")):
        data = gt.create_dataset(name, (n,), dtype=ragged)
        for i, s in enumerate(samples):
            data[i] = np.asarray(getattr(s, attr), dtype=np.float32).ravel()
    n_classes = model.config.num_labels + 1
    final = handle.create_group("final")
    final.create_dataset("logits", (n, layout.num_det, n_classes), dtype=np.float32)
    final.create_dataset("pred_boxes", (n, layout.num_det, 4), dtype=np.float32)
    width = model.config.hidden_size
    for layer in options.layers:
        for role in options.tokens:
            tokens = layout.count(role)
            # Chunks of whole images of one layer/role: a layer reads contiguously, image by image.
            chunk_rows = max(1, min(n, (1 << 20) // (tokens * width * 2)))
            handle.create_dataset(
                layer_path(layer, role), (n, tokens, width), dtype=options.dtype, chunks=(chunk_rows, tokens, width)
            )
        for name in options.maps() if layer > 0 else ():  # the embeddings have no attention
            shape = (layout.num_det, layout.num_patches)
            handle.create_dataset(
                layer_path(layer, name),
                (n,) + shape,
                dtype=options.dtype,
                chunks=(max(1, min(n, (1 << 20) // (shape[0] * shape[1] * 2))),) + shape,
            )


def write_cache(
    model_spec: ModelSpec,
    data_spec: DataSpec,
    layers: str | Sequence[int],
    tokens: Sequence[str],
    out: Path,
    dtype: str = "float16",
    batch_size: int = 8,
    progress: bool = True,
    attention: bool = False,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Extract hidden states of ``layers`` for ``tokens`` over the dataset into ``out``; resumes if possible.

    ``shard=(index, count)`` writes only that contiguous, batch-aligned share of the images (one
    torchrun rank's file, see ``probe_kit/cache/shards.py``), with the identity of the whole cache.

    With ``attention``, attention rollout is computed while extracting (full attention matrices are
    too large to cache) and, per layer, the det-token rows of the rollout and of the head-fused raw
    attention, restricted to the patch columns, are stored.
    """
    from tqdm import tqdm

    out = Path(out)
    bad = [t for t in tokens if t not in TOKEN_ROLES]
    if bad or not tokens:
        raise ValueError(f"--tokens: expected a subset of {TOKEN_ROLES}, got {list(tokens)}")
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"--dtype: expected one of {FEATURE_DTYPES}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {batch_size}")
    samples = data_spec.load()
    model, processor = load_yolos(model_spec)
    options = CacheOptions(
        resolve_layers(layers, model.config.num_hidden_layers),
        tuple(tokens),
        dtype,
        batch_size,
        attention,
        head_fusion,
        discard_ratio,
    )
    fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)  # validates the settings before any work
    rollout_layers([torch.eye(1)[None, None]], head_fusion, discard_ratio)
    bounds = batch_bounds(samples, processor, batch_size)
    sizes = {input_size(processor, samples[lo]) for lo, _ in bounds}
    if ("patch" in tokens or attention) and len(sizes) > 1:
        raise ValueError(
            f"--tokens patch/--attention: images of {data_spec.text()} resize to {len(sizes)} different sizes; "
            "patch tokens and attention maps need one grid (cache det/cls tokens only, or use images of one size)"
        )
    identity = _identity(model, processor, model_spec, data_spec, options)
    layout = _layout(model, next(iter(sizes)) if len(sizes) == 1 else (0, 0))
    if shard is not None:
        if -(-len(samples) // batch_size) < shard[1]:  # the same verdict on every rank, so none waits alone
            raise ValueError(
                f"torchrun: {len(samples)} images in batches of {batch_size} cannot give each of {shard[1]} "
                "processes a batch; use fewer processes or a smaller --batch-size"
            )
        lo, hi = shard_bounds(len(samples), *shard, align=batch_size)
        total, samples = len(samples), samples[lo:hi]

    mode = "r+" if out.exists() else "w-"
    if mode == "w-":
        out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out, mode) as handle:
        if mode == "w-":
            _create(handle, samples, identity, layout, model, options)
            if shard is not None:
                where = {"index": shard[0], "count": shard[1], "start": lo, "stop": hi, "total": total}
                handle.attrs["shard"] = json.dumps(where)
        else:
            _check_identity(handle, identity, out)
            if handle.attrs["complete"]:
                return out
        start = int(handle.attrs["num_written"])
        bar = tqdm(total=len(samples), initial=start, desc="cache", unit="img", disable=not progress)
        for batch in run_batches(
            model, processor, samples, batch_size, start, hidden_states=True, attentions=attention
        ):
            _write_batch(handle, batch, options, layout)
            handle.attrs["num_written"] = batch.start + len(batch.samples)
            handle.flush()
            bar.update(len(batch.samples))
        bar.close()
        handle.attrs["complete"] = True
    return out


def _write_batch(handle: h5py.File, batch, options: CacheOptions, layout: TokenLayout) -> None:
    lo, hi = batch.start, batch.start + len(batch.samples)
    out = batch.outputs
    handle["images/input_size"][lo:hi] = np.array([batch.input_size] * (hi - lo), dtype=np.int32)
    handle["final/logits"][lo:hi] = out.logits.float().cpu().numpy()
    handle["final/pred_boxes"][lo:hi] = out.pred_boxes.float().cpu().numpy()
    for layer in options.layers:
        state = out.hidden_states[layer]
        for role in options.tokens:
            values = state[:, layout.slice_of(role)].float().cpu().numpy()
            handle[layer_path(layer, role)][lo:hi] = values.astype(options.dtype)
    if options.attention:
        rolled = rollout_layers(out.attentions, options.head_fusion, options.discard_ratio)
        det, patch = layout.slice_of("det"), layout.slice_of("patch")
        for layer in (k for k in options.layers if k > 0):
            maps = {
                "rollout_det": rolled[layer - 1],
                "attn_det": fuse_heads(out.attentions[layer - 1].float(), options.head_fusion),
            }
            for name, matrix in maps.items():
                handle[layer_path(layer, name)][lo:hi] = matrix[:, det, patch].cpu().numpy().astype(options.dtype)
