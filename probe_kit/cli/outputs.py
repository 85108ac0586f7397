"""Output paths checked before any work starts, and removed again when the work fails.

Every command that writes names its outputs once::

    with guarded(file_out(out), file_out(dets, "--detections-out")):
        ...  # the work; on any failure (or Ctrl-C) what it created is removed

The check refuses, in one line naming the option: a folder where a file belongs (and the reverse),
a path under a file, and a place this process cannot write (probed by creating and removing a
temporary file there, so read-only file systems and permissions are both seen, also for root).
Every output is also locked while it is written (``.NAME.lock`` beside it, an OS lock released when
the process ends, however it ends): a second process writing the same output is refused by name.
Resumable outputs (studies, the reference recipe) use ``locked`` without the clean-up: their partial
state is what the next run resumes from (caches lock in ``cache/writer.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from probe_kit.errors import UserError


@dataclass(frozen=True)
class Output:
    path: Path
    option: str
    folder: bool  # a folder the command fills, or else one file

    @property
    def label(self) -> str:
        return f"{self.option} {self.path}"


def file_out(path: Path | None, option: str = "--out") -> Output | None:
    """One file a command writes (``None``: not written this time)."""
    return None if path is None else Output(Path(path), option, folder=False)


def dir_out(path: Path | None, option: str = "--out") -> Output | None:
    """A folder a command creates or fills (``None``: not written this time)."""
    return None if path is None else Output(Path(path), option, folder=True)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check(out: Output) -> None:
    path = out.path
    if path.exists():
        if out.folder and not path.is_dir():
            raise UserError(f"{out.label}: is a file; expected a folder")
        if not out.folder and path.is_dir():
            raise UserError(f"{out.label}: is a folder; expected a file name")
        if not out.folder and not path.is_file():
            raise UserError(f"{out.label}: is not a regular file")
        where = path if out.folder else path.absolute().parent
    else:
        where = _nearest_existing(path.parent)
        if not where.is_dir():
            raise UserError(f"{out.label}: {where} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".probe-kit-write-check.")
    except OSError as err:
        raise UserError(f"{out.label}: cannot write in {where} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_outputs(*outputs: Output | None) -> None:
    """Refuse unusable output paths before any work; ``UserError`` names the option and the path."""
    for out in outputs:
        if out is not None:
            _check(out)


def _topmost_missing(path: Path) -> Path | None:
    """The highest of ``path`` and its ancestors that does not exist yet (what a run would create)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


@contextmanager
def guarded(*outputs: Output | None) -> Iterator[None]:
    """Check ``outputs`` now and lock them (one writer per output); if the body raises, remove every output
    path (and folder) it created."""
    check_outputs(*outputs)
    created = [top for out in outputs if out is not None and (top := _topmost_missing(out.path)) is not None]
    with locked(*outputs):
        try:
            yield
        except BaseException:
            for path in created:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            raise


@contextmanager
def locked(*outputs: Output | None) -> Iterator[None]:
    """Check ``outputs`` and hold a writer's lock on each while the body runs: a second process writing the same
    output is refused by name (``io.output_lock``). Under torchrun rank 0 alone writes, so it alone locks."""
    from probe_kit import distributed
    from probe_kit.io import output_lock

    check_outputs(*outputs)
    with ExitStack() as stack:
        for out in outputs:
            if out is not None and distributed.is_main():
                out.path.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(output_lock(out.path, f"{out.label}: another process is writing it"))
        yield
