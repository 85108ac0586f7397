"""Sharded caches: one HDF5 file per torchrun rank, joined by an HDF5 virtual-dataset file.

Under torchrun, rank ``r`` of ``W`` writes the contiguous, batch-aligned images ``shard_bounds(N, r, W)``
into ``NAME-shard-0000r-of-0000W.h5`` next to ``--out`` (the ordinary schema and the identity of the
whole cache, plus a ``shard`` root attribute: index, count, start, stop, total). Each shard resumes on
its own. When every rank is done, rank 0 writes ``--out``: the root attributes of a normal cache plus
``shards`` (the shard file names, relative to ``--out``'s folder), the small per-image metadata
(``images/*``, ``gt/*``, strings and ragged rows, which HDF5 virtual datasets cannot map) copied, and
every fixed-size array (``final/*``, ``layers/*``) as a virtual dataset over the shards. Readers see a
single-process cache; ``merge`` copies it into one ordinary file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from probe_kit import distributed
from probe_kit.cache.writer import write_cache
from probe_kit.console import progress_bar

_COPIED = ("images", "gt")  # groups copied into the joined file; everything else becomes virtual


def shard_path(out: Path, index: int, count: int) -> Path:
    """``feature_cache/c.h5`` -> ``feature_cache/c-shard-00000-of-00002.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-shard-{index:05d}-of-{count:05d}{out.suffix or '.h5'}")


def shard_files(handle: h5py.File, path: Path) -> list[Path]:
    """The shard files a joined cache maps (``[]`` for an ordinary cache)."""
    names = json.loads(handle.attrs.get("shards", "[]"))
    return [Path(path).parent / name for name in names]


def cache_dataset(out: Path, progress: bool = True, **write_options) -> Path:
    """``write_cache(out=out, **write_options)``; under torchrun, one shard per rank joined into ``out``."""
    out = Path(out)
    if not distributed.active():
        return write_cache(out=out, progress=progress, **write_options)
    index, count = distributed.rank(), distributed.world_size()
    if out.exists() and not _is_joined(out):
        raise ValueError(
            f"--out {out}: exists as a single-process cache; finish it without torchrun or choose another --out"
        )
    path = shard_path(out, index, count)
    write_cache(out=path, progress=progress and distributed.is_main(), shard=(index, count), **write_options)
    distributed.barrier()  # every shard is complete before rank 0 maps them
    distributed.on_rank_zero(lambda: join_shards([shard_path(out, i, count) for i in range(count)], out))
    return out


def remove_cache(out: Path) -> None:
    """Delete the cache ``out`` to rebuild it; under torchrun each rank deletes its shard, rank 0 the joined file."""
    out = Path(out)
    if distributed.active():
        shard_path(out, distributed.rank(), distributed.world_size()).unlink(missing_ok=True)
    if distributed.is_main():
        out.unlink(missing_ok=True)


def _is_joined(path: Path) -> bool:
    with h5py.File(path, "r") as handle:
        return "shards" in handle.attrs


def _walk(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def join_shards(shards: list[Path], out: Path) -> Path:
    """Write ``out``: metadata copied from the complete ``shards`` (in image order), arrays virtual over them."""
    out = Path(out)
    handles = [h5py.File(p, "r") for p in shards]
    try:
        for path, handle in zip(shards, handles):
            if not handle.attrs["complete"]:
                raise ValueError(f"{path}: shard incomplete; rerun the same torchrun command to finish it")
        stops = [json.loads(h.attrs["shard"]) for h in handles]
        total = stops[0]["total"]
        if [s["start"] for s in stops] != [0] + [s["stop"] for s in stops[:-1]] or stops[-1]["stop"] != total:
            raise ValueError(f"{shards[0].parent}: the shards do not tile the {total} images in order")
        staging = out.with_name(f".{out.name}.joining")
        staging.unlink(missing_ok=True)
        with h5py.File(staging, "w") as joined:
            first = handles[0]
            joined.attrs.update({k: v for k, v in first.attrs.items() if k != "shard"})
            joined.attrs["num_written"] = total
            joined.attrs["complete"] = True
            joined.attrs["shards"] = json.dumps([p.name for p in shards])
            for name in _walk(first):
                parts = [h[name] for h in handles]
                if name.split("/")[0] in _COPIED:
                    joined.create_dataset(name, data=np.concatenate([p[()] for p in parts]), dtype=parts[0].dtype)
                    continue
                _virtual(joined, name, parts, shards, stops, total)
        os.replace(staging, out)
    finally:
        for handle in handles:
            handle.close()
    _remove_stale_shards(out, shards)
    return out


def _remove_stale_shards(out: Path, kept: list[Path]) -> None:
    """Delete shards of ``out`` written by a run with another process count (the joined file no longer maps them)."""
    suffix = out.suffix or ".h5"
    for path in out.parent.glob(f"{out.stem}-shard-[0-9]*-of-[0-9]*{suffix}"):
        if path not in kept:
            path.unlink(missing_ok=True)


def _virtual(joined: h5py.File, name: str, parts, shards: list[Path], stops: list[dict], total: int) -> None:
    shape = (total,) + parts[0].shape[1:]
    layout = h5py.VirtualLayout(shape=shape, dtype=parts[0].dtype)
    for part, path, where in zip(parts, shards, stops):
        if where["stop"] > where["start"]:
            # A path relative to the joined file: HDF5 looks for sources next to it, so the folder can move.
            layout[where["start"] : where["stop"]] = h5py.VirtualSource(f"./{path.name}", name, shape=part.shape)
    joined.create_virtual_dataset(name, layout)


def merge(src: Path, dst: Path, progress: bool = True) -> Path:
    """Copy the joined cache ``src`` into the ordinary single file ``dst`` (same datasets, same root attributes)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise ValueError(f"--out {dst}: exists; choose a new file")
    with h5py.File(src, "r") as handle:
        if "shards" not in handle.attrs:
            raise ValueError(f"{src}: not a sharded cache (no 'shards' attribute); it is already one file")
        missing = [str(p) for p in shard_files(handle, src) if not p.is_file()]
        if missing:
            raise ValueError(f"{src}: shard file missing: {missing[0]}")
        staging = dst.with_name(f".{dst.name}.merging")
        staging.unlink(missing_ok=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with h5py.File(staging, "w") as merged:
                merged.attrs.update({k: v for k, v in handle.attrs.items() if k != "shards"})
                for name in progress_bar(_walk(handle), desc="merge", unit="dataset", show=progress):
                    _copy(handle[name], merged, name)
            os.replace(staging, dst)
        finally:
            staging.unlink(missing_ok=True)
    return dst


def _copy(source: h5py.Dataset, merged: h5py.File, name: str) -> None:
    """Copy one dataset in blocks of about 64 MiB; per-image arrays chunked by whole images as the writer does."""
    if not source.is_virtual:
        merged.create_dataset(name, data=source[()], dtype=source.dtype)
        return
    n = source.shape[0]
    row = max(1, int(np.prod(source.shape[1:])) * source.dtype.itemsize)
    chunk = (max(1, min(n, (1 << 20) // row)),) + source.shape[1:] if n else None
    target = merged.create_dataset(name, source.shape, dtype=source.dtype, chunks=chunk)
    step = max(1, (64 << 20) // row)
    for lo in range(0, n, step):
        target[lo : lo + step] = source[lo : lo + step]
