"""A cache file's life on disk: one writer at a time, opened with one-line refusals, data checked against it.

Crash safety (what ``writer.py`` relies on): a new cache is built as ``.NAME.partial`` next to
``NAME`` and moved into place (``os.replace``, atomic) only once its header and every dataset are
created, with all datasets written later allocated at creation. After the move, extraction
changes only raw feature bytes and two attributes rewritten in place (``num_written``,
``complete``), each flushed after the bytes it vouches for. So a process killed at any moment
leaves either a stray ``.partial`` (deleted by the next run, which starts over) or a file that
opens and resumes. This holds for a killed process, not for a power cut (nothing is fsynced).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from probe_kit.cache.schema import check_schema_version
from probe_kit.data.identity import DataIdentity
from probe_kit.io import output_lock


def partial_path(out: Path) -> Path:
    """Where a new cache is built before it is moved to ``out``."""
    return out.with_name(f".{out.name}.partial")


def writer_lock(out: Path):
    """Hold an exclusive OS lock on ``.NAME.lock`` while writing the cache ``out``; a second writer is refused."""
    return output_lock(out, f"{out}: another process is writing this cache")


def open_cache_file(path: Path, mode: str = "r", **h5_options) -> h5py.File:
    """Open an existing cache of this schema version, or refuse in one line saying what the file is.

    ``h5_options`` go to ``h5py.File`` (the writer turns the chunk cache off, so a failed write raises at
    the write instead of when HDF5 evicts the chunk, where h5py can only print it).
    """
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; a cache is one .h5 file")
    if not path.is_file():
        raise ValueError(f"{path}: no such cache file")
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"{path}: not an HDF5 file, so not a feature cache; refusing to read or overwrite it "
            "(name a cache, or a new file for --out)"
        )
    try:
        handle = h5py.File(path, mode, **h5_options)
    except OSError as err:
        if "unable to lock file" in str(err):
            raise ValueError(f"{path}: another process has this cache open for writing; wait for it to finish") from err
        reason = str(err).splitlines()[0]
        raise ValueError(
            f"{path}: an HDF5 file that cannot be opened ({reason}); if it is a damaged cache, delete it and run "
            "`probe-kit cache` again"
        ) from err
    try:
        check_schema_version(handle.attrs.get("schema_version"), path)
    except ValueError:
        handle.close()
        raise
    return handle


def recorded_data(handle: h5py.File, path: Path) -> DataIdentity:
    """The data identity a cache was made from: its annotation-file hashes and per-image hashes."""
    if "data" not in handle.attrs or "images/sha256" not in handle:
        raise ValueError(f"{path}: the cache records no data identity (data attribute, images/sha256)")
    names = [n.decode() for n in handle["images/file_name"][:]]
    hashes = [h.decode() for h in handle["images/sha256"][:]]
    return DataIdentity(json.loads(handle.attrs["data"])["files"], tuple(zip(names, hashes)))


def check_data(handle: h5py.File, live: DataIdentity, path: Path) -> None:
    """Refuse, naming the first differing image or annotation file, when ``live`` is not the recorded data."""
    difference = recorded_data(handle, path).first_difference(live)
    if difference is not None:
        raise ValueError(
            f"{path}: the dataset changed since this cache was made ({difference}); restore it, "
            "or write a new cache to another file"
        )
