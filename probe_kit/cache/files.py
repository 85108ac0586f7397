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

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from probe_kit.cache.schema import check_schema_version
from probe_kit.data.identity import DataIdentity


def partial_path(out: Path) -> Path:
    """Where a new cache is built before it is moved to ``out``."""
    return out.with_name(f".{out.name}.partial")


@contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock`` on ``.NAME.lock``) while writing ``out``; a second writer is refused.

    The lock file is removed on release. A writer that opened it just before the holder removed it
    locks a dead inode, notices (the path is gone or is another file) and tries again.
    """
    lock = out.with_name(f".{out.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"{out}: cannot write in {out.parent} ({err.strerror or err})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"{out}: another process is writing this cache (it holds {lock.name}); wait for it to finish "
                "or choose another --out"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(lock)
        os.close(fd)


def open_cache_file(path: Path, mode: str = "r") -> h5py.File:
    """Open an existing cache of this schema version, or refuse in one line saying what the file is."""
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
        handle = h5py.File(path, mode)
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
