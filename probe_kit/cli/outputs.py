"""Output paths checked before any work starts, and removed again when the work fails.

Every command that writes names its outputs once::

    with guarded(file_out(out), file_out(dets, "--detections-out")):
        ...  # the work; on any failure (or Ctrl-C) what it created is removed

One policy for an existing output, in every command: an output of the same kind that probe-kit wrote
(``Kind``: a decision, a report, an exits folder, ...) is replaced, and only once the new one is
complete (files are written to a temporary name and renamed; a folder is moved aside to
``.NAME.previous`` and put back if the run fails, is stopped or was killed); anything else at the path
is refused in one line and left untouched. Caches, studies and the reference recipe are resumed
instead, when their identity matches (``locked``; caches check in ``cache/writer.py``).

The check refuses, in one line naming the option: a folder where a file belongs (and the reverse),
a path under a file, and a place this process cannot write (probed by creating and removing a
temporary file there, so read-only file systems and permissions are both seen, also for root).
Every output is also locked while it is written (``.NAME.lock`` beside it, an OS lock released when
the process ends, however it ends): a second process writing the same output is refused by name.
Resumable outputs (studies, the reference recipe) use ``locked`` without the clean-up: their partial
state is what the next run resumes from (caches lock in ``cache/writer.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from probe_kit.errors import UserError


@dataclass(frozen=True)
class Kind:
    """What an earlier output of a command looks like, so a rerun may replace it and nothing else."""

    name: str
    looks_like: Callable[[Path], bool]


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _json_object_with(*keys: str) -> Callable[[Path], bool]:
    return lambda path: isinstance(value := _json(path), dict) and all(key in value for key in keys)


def _folder_with(marker: str) -> Callable[[Path], bool]:
    return lambda path: (path / marker).is_file()


REPORT_GENERATOR = '<meta name="generator" content="probe-kit">'


def _report(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return REPORT_GENERATOR in handle.read(4096)
    except OSError:
        return False


DECISION = Kind("a decision (probe-kit decide)", _json_object_with("verdict", "exits", "criteria"))
REPORT = Kind("a probe-kit report", _report)
METRICS = Kind("an evaluation (probe-kit evaluate)", _json_object_with("source"))
DETECTIONS = Kind("COCO detections", lambda path: isinstance(_json(path), list))
COCO_GROUND_TRUTH = Kind("COCO ground truth", _json_object_with("images", "annotations"))
ANALYSIS = Kind("an analyzer's folder (probe-kit analyze)", _folder_with("result.json"))
EXITS = Kind("an exits folder (probe-kit train-exits)", _folder_with("config.json"))
EXITS_EVALUATION = Kind("an exit evaluation (probe-kit evaluate-exits)", _folder_with("result.json"))
NEW_FOLDER = Kind("an empty folder (a dataset is never written over files)", lambda path: False)
RESUMABLE = Kind("a folder this command resumes", lambda path: True)  # its identity is checked where it is read
STUDY = Kind("a study folder (probe-kit run)", _folder_with("experiment.json"))  # which run resumes


@dataclass(frozen=True)
class Output:
    path: Path
    option: str
    folder: bool  # a folder the command fills, or else one file
    kind: Kind

    @property
    def label(self) -> str:
        return f"{self.option} {self.path}"


def file_out(path: Path | None, kind: Kind, option: str = "--out") -> Output | None:
    """One file a command writes (``None``: not written this time)."""
    return None if path is None else Output(Path(path), option, False, kind)


def dir_out(path: Path | None, kind: Kind, option: str = "--out") -> Output | None:
    """A folder a command creates or fills (``None``: not written this time)."""
    return None if path is None else Output(Path(path), option, True, kind)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check(out: Output) -> None:
    _check_place(out)
    check_kind(out)


def check_kind(out: Output) -> None:
    """Nothing at the path, an empty folder, or an earlier output of the same kind (which may be replaced)."""
    if out.path.exists() and not (_empty_folder(out.path) or out.kind.looks_like(out.path)):
        raise UserError(
            f"{out.label}: exists and is not {out.kind.name}; refusing to replace it (remove it, or choose "
            "another path)"
        )


def _check_place(out: Output) -> None:
    """A file where a file belongs (or a folder), in a place this process can write."""
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


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


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


def _previous(folder: Path) -> Path:
    """Where a folder being replaced waits until its replacement is complete."""
    return folder.with_name(f".{folder.name}.previous")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def guarded(*outputs: Output | None) -> Iterator[None]:
    """Check ``outputs`` now and lock them (one writer per output); an existing output folder is set aside and
    removed once the body succeeds. If the body raises, remove every output path (and folder) it created and put
    back what it replaced."""
    from probe_kit import distributed

    outputs = tuple(out for out in outputs if out is not None)
    # Before locking: the lock file's folder is made for it, and a failed run removes that folder too.
    created = [top for out in outputs if (top := _topmost_missing(out.path)) is not None]
    with locked(*outputs):
        writer = distributed.is_main()  # under torchrun rank 0 alone writes (and replaces)
        for out in outputs:
            if writer and out.folder and _previous(out.path).is_dir():  # a run killed while replacing it
                _remove(out.path)
                os.replace(_previous(out.path), out.path)
        for out in outputs:
            check_kind(out)  # its place was checked by ``locked``
        replaced = [o.path for o in outputs if writer and o.folder and o.path.is_dir() and any(o.path.iterdir())]
        for path in replaced:
            os.replace(path, _previous(path))
        try:
            yield
        except BaseException:
            for path in [*created, *replaced]:
                _remove(path)
            for path in replaced:
                os.replace(_previous(path), path)
            raise
        for path in replaced:
            shutil.rmtree(_previous(path), ignore_errors=True)


@contextmanager
def locked(*outputs: Output | None) -> Iterator[None]:
    """Check ``outputs`` and hold a writer's lock on each while the body runs: a second process writing the same
    output is refused by name (``io.output_lock``). Under torchrun rank 0 alone writes, so it alone locks."""
    from probe_kit import distributed
    from probe_kit.io import output_lock

    for out in outputs:
        if out is not None:
            _check_place(out)  # what is there is judged under the lock (``guarded``, or where it is resumed)
    with ExitStack() as stack:
        for out in outputs:
            if out is not None and distributed.is_main():
                out.path.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(output_lock(out.path, f"{out.label}: another process is writing it"))
        yield
