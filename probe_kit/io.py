"""Reading and writing result files: atomic writes, and reads that refuse bad files in one line naming them."""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probe_kit.errors import UserError

_HELD: list[Path] = []  # outputs this process is writing now (named when a signal stops it)
_STOPS: list[int] = []  # signals received whose exception may have been swallowed (see ``redeliver_stop``)


def note_stop(signum: int) -> None:
    """Remember a stop signal as its handler raises (the CLI's SIGINT/SIGTERM handler)."""
    _STOPS.append(signum)


def pending_stop() -> int | None:
    """The last stop signal noted in this command, if any."""
    return _STOPS[-1] if _STOPS else None


def forget_stops() -> None:
    """Drop noted stop signals (their command has ended)."""
    _STOPS.clear()


def redeliver_stop() -> None:
    """Deliver a noted stop signal again, here, at a point where its exception propagates. Python ignores an
    exception raised inside a finalizer or weakref callback, so a signal landing there would otherwise be lost
    and a long loop would run to the end as if never stopped. Long loops call this between steps."""
    if _STOPS:
        import signal

        signal.raise_signal(_STOPS.pop())


def held_outputs() -> list[Path]:
    """The outputs this process holds a writer's lock on, oldest first."""
    return list(_HELD)


@contextmanager
def output_lock(out: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock`` on ``.NAME.lock`` beside ``out``) while writing ``out``; a second
    writer is refused with ``refusal`` and the lock's name. A lock held by a killed process is released by the
    OS, so it never blocks the next run; the lock file is removed on release. A writer that opened it just
    before the holder removed it locks a dead inode, notices (the path is gone or another file) and retries.
    """
    lock = out.with_name(f".{out.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"{out}: cannot write in {out.parent} ({err.strerror or err})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{refusal} (it holds {lock.name}); wait for it to finish or choose another --out"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD.append(out)
    try:
        yield
    finally:
        _HELD.remove(out)
        lock.unlink(missing_ok=True)
        os.close(fd)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` via a temporary file in the same folder and rename; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be read by others
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_reason(err: Exception) -> str:
    """What a failed write ran into, in words (no space, file too large, quota, read-only), from any library's
    message (h5py, safetensors, the OS); else its first line."""
    text = str(err)
    known = ("No space left on device", "File too large", "Disk quota exceeded", "Read-only file system")
    found = next((k.lower() for k in known if k.lower() in text.lower()), None)
    return found or (text.splitlines()[0][:200] if text else type(err).__name__)


def write_error(path: Path, err: Exception) -> OSError:
    """One line naming ``path`` and what went wrong."""
    return OSError(f"{path}: cannot write ({write_reason(err)}); nothing was left there")


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON, atomically (see ``write_text``): a NaN or infinity is refused,
    naming the file and where it sits, rather than written as the invalid token ``NaN``."""
    bad = non_finite(data)
    if bad is not None:
        raise ValueError(f"{path}: refusing to write a non-finite number ({bad}); the run that computed it is broken")
    return write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def non_finite(data: Any, where: str = "") -> str | None:
    """``key.path = nan`` of the first NaN or infinity in nested JSON-like ``data``, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or 'value'} = {data}"
    if isinstance(data, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    return next((found for key, value in items if (found := non_finite(value, key)) is not None), None)


def read_json(path: Path, what: str = "JSON") -> Any:
    """Load JSON with a one-line error naming the file (missing, a folder, unreadable, not JSON)."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or device would block or never end
        raise UserError(f"{path}: not a regular file (a FIFO, device or socket); expected a JSON file ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; expected a {what} file") from None
    except PermissionError:
        raise UserError(f"{path}: cannot read this {what} file (permission denied)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a {what} file (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid {what} ({err})") from None
    except RecursionError:  # json.loads of "[[[[..." thousands deep
        raise UserError(f"{path}: not valid {what} (nested too deeply)") from None


MAX_YAML_BYTES = 1 << 20  # a study's settings fit in a few kB; a larger "config" is a mistake or an attack


def read_yaml(path: Path, what: str = "YAML") -> Any:
    """``yaml.safe_load`` of a settings file, strictly: a duplicate key is an error naming the file and line (the
    last value would silently win), and a file over ``MAX_YAML_BYTES`` is refused unread (YAML aliases can
    make a small file expand without bound, so a size cap is the cheap guard)."""
    import yaml

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a {what} file")
    if size > MAX_YAML_BYTES:
        raise UserError(f"{path}: {size} bytes; {what} files are at most {MAX_YAML_BYTES} bytes")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader(path))  # noqa: S506 (SafeLoader)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a {what} file (not UTF-8 text)") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def _unique_key_loader(path: Path):
    """A ``yaml.SafeLoader`` that refuses a mapping with the same key twice, naming ``path`` and the line."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise UserError(
                        f"{path}:{key_node.start_mark.line + 1}: duplicate key {key!r} (first on line {seen[key]}); "
                        "YAML would silently keep the last value"
                    )
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    return UniqueKeys


def read_result(path: Path) -> dict:
    """An analyzer's ``result.json``: a mapping with ``analyzer`` (text) and ``layers`` (per-layer mappings)."""
    data = read_json(path, "analyzer result")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected an analyzer result (a JSON object), got {type(data).__name__}")
    if not isinstance(data.get("analyzer"), str) or not data["analyzer"]:
        raise UserError(f"{path}: analyzer: missing; expected the analyzer's name (is this a result.json?)")
    layers = data.get("layers", {})
    if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
        raise UserError(f"{path}: layers: expected a mapping of layer -> metrics")
    for layer, metrics in layers.items():
        if not str(layer).isdigit():
            raise UserError(f"{path}: layers: {layer!r} is not a layer number (0 = embeddings, k = block k)")
        for key, value in metrics.items():  # numbers, or null for "not measured here"; anything else is damage
            if value is not None and not _finite_number(value):
                raise UserError(f"{path}: layers.{layer}.{key}: expected a finite number or null, got {value!r:.40}")
            if key.startswith(("AP", "AR")) and value is not None and not (0 <= value <= 1 or value == -1):
                raise UserError(
                    f"{path}: layers.{layer}.{key}: expected a COCO metric in [0, 1] (or -1: nothing to score), "
                    f"got {value!r:.40}"
                )
    if "profile" in data:  # the FLOP profile the decision reads the model's depth and costs from
        profile = data["profile"]
        blocks = isinstance(profile, dict) and isinstance(profile.get("blocks"), list) and profile["blocks"]
        others = blocks and all(_finite_number(profile[k]) for k in ("embeddings", "head") if k in profile)
        if not others or not all(_finite_number(b) for b in profile["blocks"]):
            raise UserError(f"{path}: profile: expected a list of per-block GFLOPs and numbers for embeddings, head")
    return data


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
