"""Writing a feature cache: batched extraction, resumable, crash-safe, refusing to mix inputs.

The file is pre-sized for every image of the dataset; ``num_written`` (a root attribute,
flushed after each batch) says how far it got, and only a finished run sets ``complete``.
A re-run with the same identity (model, preprocessing, dataset description, data hashes,
options) continues at ``num_written``; any difference is refused with a message naming it.
A process killed at any moment leaves a state the next run resumes or restarts (see
``probe_kit/cache/files.py``). ``write_file`` writes any range ``samples[lo:hi]`` into one file,
which is how each torchrun rank writes its shard.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import torch

from probe_kit.cache.files import check_data, open_cache_file, partial_path, writer_lock
from probe_kit.cache.schema import (
    ATTENTION_MAPS,
    CHECKSUMS,
    FEATURE_DTYPES,
    IDENTITY_ATTRS,
    SCHEMA_VERSION,
    TOKEN_ROLES,
    TokenLayout,
    checksummed,
    layer_path,
    per_image_datasets,
    row_checksums,
)
from probe_kit.data.identity import DataIdentity, identify
from probe_kit.data.sample import Sample
from probe_kit.data.spec import DataSpec
from probe_kit.distributed import shard_bounds
from probe_kit.io import redeliver_stop, write_reason
from probe_kit.models.layers import resolve_layers
from probe_kit.models.loading import ModelSpec, load_yolos
from probe_kit.models.record import ModelRecord
from probe_kit.models.runner import batch_bounds, input_size, patch_pixels, run_batches
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


def _check_identity(handle: h5py.File, job: Extraction, lo: int, hi: int, path: Path) -> None:
    """Refuse to append to a cache made from other data, model, preprocessing or options, naming the difference."""
    check_data(handle, job.data_slice(lo, hi), path)
    for key in IDENTITY_ATTRS:
        if handle.attrs.get(key) != job.identity[key]:
            theirs, ours = json.loads(handle.attrs.get(key, "{}")), json.loads(job.identity[key])
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            verb = "differ" if key.endswith("s") else "differs"  # "options differ", "model differs"
            raise ValueError(f"{path}: refusing to append, {key} {verb} from the existing cache (fields {diff})")


def layout_for(model, input_size: tuple[int, int]) -> TokenLayout:
    """Where each token role sits for ``model`` at ``input_size`` (width, height)."""
    patch = patch_pixels(model)
    return TokenLayout(model.config.num_detection_tokens, input_size[1] // patch, input_size[0] // patch)


@dataclass
class Extraction:
    """One validated extraction: the model, the samples with their data identity, the cache identity and layout."""

    model: torch.nn.Module
    processor: object
    samples: list[Sample]
    data: DataIdentity
    identity: dict[str, str]  # the root attributes in IDENTITY_ATTRS
    layout: TokenLayout
    options: CacheOptions
    skipped_frames: dict[str, int]  # per sequence, listed frames without an image file (warned of, not cached)

    def data_slice(self, lo: int, hi: int) -> DataIdentity:
        """The data identity of ``samples[lo:hi]`` (the rows of one file)."""
        return DataIdentity(self.data.files, self.data.images[lo:hi])


@dataclass(frozen=True)
class Setup:
    """What an extraction runs on, checked against its options: everything but the data's content hashes."""

    samples: list[Sample]
    model: torch.nn.Module
    processor: object
    options: CacheOptions
    layout: TokenLayout
    input_size: tuple[int, int] | None  # (width, height) every image resizes to; None where sizes differ


def prepare_setup(
    model_spec: ModelSpec, data_spec: DataSpec, layers: str | Sequence[int], tokens: Sequence[str], options: dict
) -> Setup:
    """Load the dataset listing and the model, and check every option against them (``cache --dry-run`` stops
    here; an extraction goes on to hash the data)."""
    samples = data_spec.load()
    model, processor = load_yolos(model_spec)  # a refused model ends the run before the hashing bar starts
    opts = CacheOptions(resolve_layers(layers, model.config.num_hidden_layers), tuple(tokens), **options)
    fuse_heads(torch.zeros(1, 1, 1, 1), opts.head_fusion)  # validates the settings before any work
    rollout_layers([torch.eye(1)[None, None]], opts.head_fusion, opts.discard_ratio)
    bounds = batch_bounds(samples, processor, opts.batch_size)
    sizes = {input_size(processor, samples[lo]) for lo, _ in bounds}
    if ("patch" in opts.tokens or opts.attention) and len(sizes) > 1:
        raise ValueError(
            f"--tokens patch/--attention: images of {data_spec.text()} resize to {len(sizes)} different sizes; "
            "patch tokens and attention maps need one grid (cache det/cls tokens only, or use images of one size)"
        )
    size = next(iter(sizes)) if len(sizes) == 1 else None
    return Setup(samples, model, processor, opts, layout_for(model, size or (0, 0)), size)


def prepare_extraction(
    model_spec: ModelSpec,
    data_spec: DataSpec,
    layers: str | Sequence[int],
    tokens: Sequence[str],
    options: dict,
    progress: bool = True,
) -> Extraction:
    """``prepare_setup``, then hash the dataset's files: what the cache's identity records."""
    setup = prepare_setup(model_spec, data_spec, layers, tokens, options)
    data = identify(data_spec, setup.samples, progress=progress)
    identity = _identity(setup.model, setup.processor, model_spec, data_spec, setup.options)
    identity["data"] = data.record()
    skipped = data_spec.skipped_frames()
    return Extraction(setup.model, setup.processor, setup.samples, data, identity, setup.layout, setup.options, skipped)


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
    out = Path(out)
    bad = [t for t in tokens if t not in TOKEN_ROLES]
    if bad or not tokens:
        raise ValueError(f"--tokens: expected a subset of {TOKEN_ROLES}, got {list(tokens)}")
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"--dtype: expected one of {FEATURE_DTYPES}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {batch_size}")
    made_parent = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with writer_lock(out):
            if out.exists():
                open_cache_file(out).close()  # refuse a foreign or unreadable file before any work
            options = {
                "dtype": dtype,
                "batch_size": batch_size,
                "attention": attention,
                "head_fusion": head_fusion,
                "discard_ratio": discard_ratio,
            }
            job = prepare_extraction(model_spec, data_spec, layers, tokens, options, progress)
            lo, hi = 0, len(job.samples)
            if shard is not None:
                if -(-hi // batch_size) < shard[1]:  # the same verdict on every rank, so none waits alone
                    raise ValueError(
                        f"torchrun: {hi} images in batches of {batch_size} cannot give each of {shard[1]} "
                        "processes a batch; use fewer processes or a smaller --batch-size"
                    )
                lo, hi = shard_bounds(hi, *shard, align=batch_size)
            return write_file(job, out, lo, hi, shard, progress)
    finally:
        if made_parent and not any(out.parent.iterdir()):
            out.parent.rmdir()  # a failure before the first file leaves no empty folder behind


def write_file(
    job: Extraction,
    out: Path,
    lo: int = 0,
    hi: int | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> Path:
    """Write ``job.samples[lo:hi]`` into the one file ``out``: create it, resume it, or return it if complete.

    The caller holds ``writer_lock(out)``. A new file is built under ``partial_path(out)`` and moved
    into place once every dataset exists (see ``probe_kit/cache/files.py``), so a killed run leaves
    either a stray partial file, restarted from scratch, or a file this function resumes.
    """
    hi = len(job.samples) if hi is None else hi
    _check_space(out, _planned_bytes(job, hi - lo))
    if not out.exists():
        _create_atomically(job, out, lo, hi, shard)
    # No chunk cache: a write that fails (no space, quota) raises here, before num_written vouches for it.
    with open_cache_file(out, "r+", rdcc_nbytes=0) as handle:
        _check_identity(handle, job, lo, hi, out)
        if handle.attrs["complete"]:
            return out
        start = int(handle.attrs["num_written"])
        try:
            _write_batches(handle, job, lo, hi, start, progress)
        except OSError as err:
            raise OSError(
                f"{out}: writing failed ({write_reason(err)}); the cache is left incomplete at "
                f"{int(handle.attrs['num_written'])} of {hi - lo} images: free space and rerun to resume"
            ) from None
        handle.attrs.modify("complete", True)
        handle.flush()
    return out


def _planned_bytes(job: Extraction, n: int) -> int:
    """Bytes the per-image datasets of ``n`` images take (what early allocation reserves)."""
    return sum(n * int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in _image_datasets(job))


def _check_space(out: Path, planned: int) -> None:
    """Refuse, with both numbers, when the file system (or ``ulimit -f``) cannot hold what is left to write: a
    sparse, pre-allocated file would otherwise be written into a full disk and read back as zeros."""
    import shutil

    stat = out.stat() if out.exists() else None
    need = max(0, planned - (stat.st_blocks * 512 if stat else 0))  # a resumed file already holds its blocks
    free, where = shutil.disk_usage(out.parent).free, f"free on {out.parent}"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    room = limit - (stat.st_size if stat else 0)
    if limit != resource.RLIM_INFINITY and room < free:
        free, where = max(0, room), "allowed by the file-size limit"
    if need > free:
        raise OSError(
            f"{out}: needs {_size(need)} more for this cache, {_size(free)} {where}; free space or choose another --out"
        )


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _write_batches(handle: h5py.File, job: Extraction, lo: int, hi: int, start: int, progress: bool) -> None:
    """Extract and write ``job.samples[lo:hi]`` from image ``start`` on, flushing before each count update."""
    from probe_kit.console import progress_bar

    batches = run_batches(
        job.model,
        job.processor,
        job.samples[lo:hi],
        job.options.batch_size,
        start,
        hidden_states=True,
        attentions=job.options.attention,
    )
    columns = {path: column for column, path in enumerate(checksummed(_image_datasets(job)))}
    with progress_bar(total=hi - lo, initial=start, desc="cache", unit="img", show=progress) as bar:
        for batch in batches:
            _write_batch(handle, batch, job.options, job.layout, columns)
            handle.flush()  # the batch's bytes reach the file before the count that vouches for them
            handle.attrs.modify("num_written", batch.start + len(batch.samples))  # in place: no reallocation
            handle.flush()
            bar.update(len(batch.samples))
            redeliver_stop()  # a stop signal whose exception was lost ends the run here, at a batch boundary


def _create_atomically(job: Extraction, out: Path, lo: int, hi: int, shard: tuple[int, int] | None) -> None:
    partial = partial_path(out)
    partial.unlink(missing_ok=True)  # left by a killed run: it never held a finished header
    try:
        with h5py.File(partial, "w-") as handle:
            _create(handle, job, lo, hi)
            if shard is not None:
                where = {"index": shard[0], "count": shard[1], "start": lo, "stop": hi, "total": len(job.samples)}
                handle.attrs["shard"] = json.dumps(where)
        os.replace(partial, out)
    except OSError as err:
        raise OSError(f"{out}: cannot create the cache ({write_reason(err)}); nothing was written") from None
    finally:
        partial.unlink(missing_ok=True)


def _preallocated(group: h5py.Group, name: str, shape: tuple[int, ...], dtype, chunks=None) -> h5py.Dataset:
    """A dataset whose file space is allocated now (never filled), so later writes change no metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape, dtype=dtype, chunks=chunks, dcpl=dcpl)


def _create(handle: h5py.File, job: Extraction, lo: int, hi: int) -> None:
    """Every attribute and dataset of a file for ``job.samples[lo:hi]``; per-batch ones allocated, not written."""
    samples, layout = job.samples[lo:hi], job.layout
    n = len(samples)
    handle.attrs.update(job.identity)
    handle.attrs["schema_version"] = SCHEMA_VERSION
    handle.attrs["layout"] = layout.to_json()
    handle.attrs["versions"] = json.dumps(package_versions())
    handle.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    handle.attrs["complete"] = False
    handle.attrs["num_written"] = 0
    handle.attrs["skipped_frames"] = json.dumps(job.skipped_frames)
    strings = h5py.string_dtype()
    images = handle.create_group("images")
    images["image_id"] = np.array([s.image_id for s in samples], dtype=np.int64)
    images["file_name"] = np.array([s.file_name for s in samples], dtype=object).astype(strings)
    images["sha256"] = np.array([digest for _, digest in job.data.images[lo:hi]], dtype="S64")
    images["orig_size"] = np.array([(s.width, s.height) for s in samples], dtype=np.int32)
    images["difficulty"] = np.array([s.meta.get("difficulty", "") for s in samples], dtype=object).astype(strings)
    ragged = h5py.vlen_dtype(np.float32)
    gt = handle.create_group("gt")
    for name, attr in (("boxes", "boxes"), ("ignore", "ignore")):
        data = gt.create_dataset(name, (n,), dtype=ragged)
        for i, s in enumerate(samples):
            data[i] = np.asarray(getattr(s, attr), dtype=np.float32).ravel()
    datasets = _image_datasets(job)
    handle.attrs["checksummed"] = json.dumps(checksummed(datasets))
    _preallocated(handle, CHECKSUMS, (n, len(checksummed(datasets))), "uint32")
    for path, shape, dtype in datasets:
        # Feature chunks hold whole images of one layer/role (about 1 MiB): a layer reads contiguously.
        chunks = (
            (max(1, min(n, (1 << 20) // (shape[0] * shape[1] * 2))), *shape) if path.startswith("layers/") else None
        )
        _preallocated(handle, path, (n, *shape), dtype, chunks)


def _image_datasets(job: Extraction) -> list[tuple[str, tuple[int, ...], str]]:
    """``(path, shape per image, dtype)`` of every dataset written batch by batch (allocated at creation)."""
    return image_datasets(job.model.config, job.options, job.layout)


def image_datasets(config, options: CacheOptions, layout: TokenLayout) -> list[tuple[str, tuple[int, ...], str]]:
    """The per-image datasets of a cache of a model with ``config`` under ``options`` and ``layout``."""
    return per_image_datasets(
        layout, options.layers, options.tokens, options.dtype, options.maps(), config.hidden_size, config.num_labels
    )


def _write_batch(handle: h5py.File, batch, options: CacheOptions, layout: TokenLayout, columns: dict[str, int]):
    """Write one batch's rows of every per-image dataset, and the checksums of those ``cache verify`` checks
    (``columns``: each checksummed dataset's column, as the file's ``checksummed`` attribute lists them)."""
    lo, hi = batch.start, batch.start + len(batch.samples)
    handle["images/input_size"][lo:hi] = np.array([batch.input_size] * (hi - lo), dtype=np.int32)
    sums = np.zeros((hi - lo, len(columns)), dtype=np.uint32)
    for path, values in _computed_rows(batch.outputs, options, layout):
        handle[path][lo:hi] = values
        sums[:, columns[path]] = row_checksums(values)
    handle[CHECKSUMS][lo:hi] = sums


def _computed_rows(out, options: CacheOptions, layout: TokenLayout) -> Iterator[tuple[str, np.ndarray]]:
    """``(dataset path, the batch's rows as stored)`` for everything the model computed."""
    yield "final/logits", out.logits.float().cpu().numpy()
    yield "final/pred_boxes", out.pred_boxes.float().cpu().numpy()
    for layer in options.layers:
        state = out.hidden_states[layer]
        for role in options.tokens:
            values = state[:, layout.slice_of(role)].float().cpu().numpy()
            yield layer_path(layer, role), values.astype(options.dtype)
    if options.attention:
        rolled = rollout_layers(out.attentions, options.head_fusion, options.discard_ratio)
        det, patch = layout.slice_of("det"), layout.slice_of("patch")
        for layer in (k for k in options.layers if k > 0):
            maps = {
                "rollout_det": rolled[layer - 1],
                "attn_det": fuse_heads(out.attentions[layer - 1].float(), options.head_fusion),
            }
            for name, matrix in maps.items():
                yield layer_path(layer, name), matrix[:, det, patch].cpu().numpy().astype(options.dtype)
