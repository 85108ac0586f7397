"""What the command line prints besides its results: progress bars on a terminal only, a line per stage, a log file.

- **Progress bars** (``progress_bar``, tqdm) are drawn only when stderr is a terminal and ``--quiet`` is off: a
  redirected stderr gets no carriage-return frames, only the lines the commands print.
- **Stage lines** (``say``; ``elapsed`` formats a stage's time): one line per stage event on stderr; ``--quiet``
  keeps them off the console (a ``--log-file`` still gets them). ``warn`` lines print whatever ``--quiet`` says.
- **``--log-file PATH``** (``log_to``): everything printed on stdout and stderr is also appended to PATH, with a
  progress bar reduced to its last frame, so the log reads as lines.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

_quiet = False
_log: IO[str] | None = None


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress bars and no stage lines on the console (results and errors still print)."""
    global _quiet
    _quiet = quiet


def show_progress() -> bool:
    return not _quiet and sys.stderr.isatty()


def progress_bar(iterable: Any = None, *, show: bool = True, **options: Any):
    """``tqdm(iterable, **options)``, drawn only where ``show`` and the console is a terminal (``--quiet`` off)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not (show and show_progress()), **options)


def say(message: str) -> None:
    """One stage line on stderr (the log file only, under ``--quiet``)."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)
    elif _log is not None:
        _log.write(message + "\n")
        _log.flush()


def warn(message: str) -> None:
    """``warning: message`` on stderr (so in the log file too), ``--quiet`` or not."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def elapsed(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def log_line(message: str) -> None:
    """A line for the log file only (the error line click prints after the command has returned)."""
    if _log is not None:
        _log.write(message + "\n")
        _log.flush()


class _Tee:
    """A text stream that also appends what it is given to the log, a line at a time, keeping only what follows
    a line's last carriage return (a progress bar's final frame)."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self._stream, self._log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            self._log.write(line.rsplit("\r", 1)[-1] + "\n")
        self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def close_line(self) -> None:
        if self._line.rsplit("\r", 1)[-1]:
            self._log.write(self._line.rsplit("\r", 1)[-1] + "\n")
        self._line = ""

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the console stream
        return getattr(self._stream, name)


@contextmanager
def log_to(path: Path | None) -> Iterator[None]:
    """Append everything printed while the body runs to ``path`` (``None``: no log)."""
    global _log
    if path is None:
        yield
        return
    from probe_kit import distributed

    if not distributed.is_main():  # under torchrun rank 0 alone logs
        yield
        return
    with open(path, "a", encoding="utf-8") as log:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"$ probe-kit {shlex.join(sys.argv[1:])}  # {started}\n")
        tees = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        previous = sys.stdout, sys.stderr
        sys.stdout, sys.stderr, _log = *tees, log
        try:
            yield
        finally:
            sys.stdout, sys.stderr, _log = *previous, None
            for tee in tees:
                tee.close_line()
