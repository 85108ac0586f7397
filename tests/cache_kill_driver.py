"""Kill the cache writer with SIGKILL at chosen moments, then resume it (used by tests/test_cache_kill.py).

Runs in its own process so it can fork: each try is a forked child that writes a cache and is
SIGKILLed either just before its K-th HDF5/filesystem call (counting every File open/flush/close,
group and dataset creation, dataset write, attribute write and os.replace) or after a random delay;
a second forked child then reruns the same write to completion. Results go to ``WORK/results.json``;
the test compares every resulting file with an uninterrupted run.

    python cache_kill_driver.py plan MODEL SYNTH WORK SEED N_RANDOM
    python cache_kill_driver.py pause MODEL SYNTH OUT MARKER   # write until the first batch, then sleep
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import torch

from probe_kit.cache import writer
from probe_kit.data.spec import parse_data_spec
from probe_kit.models.loading import ModelSpec, load_yolos

# Every call through which the writer changes the file system; the child counts them in call order.
_WATCHED = [
    (h5py.h5f, "create"),
    (h5py.h5f, "open"),
    (h5py.File, "flush"),
    (h5py.File, "close"),
    (h5py.Group, "create_group"),
    (h5py.Group, "create_dataset"),
    (h5py.Group, "__setitem__"),
    (h5py.Dataset, "__setitem__"),
    (h5py.AttributeManager, "__setitem__"),
    (h5py.AttributeManager, "modify"),
    (os, "replace"),
]
_REPEATED = ("Group.create_dataset", "Group.__setitem__", "Dataset.__setitem__", "AttributeManager.__setitem__")


def _watch(kill_at: int | None, log: list[str]) -> None:
    """Count watched calls into ``log``; SIGKILL this process just before call number ``kill_at``."""
    for owner, name in _WATCHED:
        original = getattr(owner, name)
        label = f"{owner.__name__}.{name}"

        def wrapped(*args, _original=original, _label=label, **kwargs):
            if kill_at is not None and len(log) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            log.append(_label)
            return _original(*args, **kwargs)

        setattr(owner, name, wrapped)


def _write(model: str, synth: str, out: Path) -> None:
    writer.write_cache(
        ModelSpec(model),
        parse_data_spec(f"synth:{synth}"),
        "all",
        ["det", "patch", "cls"],
        out,
        batch_size=4,
        progress=False,
        attention=True,
    )


def _child(run, error_file: Path) -> int:
    """Fork; the child calls ``run()`` and exits 0, or writes its traceback and exits 1. Returns the wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            run()
        except BaseException:  # noqa: BLE001 (the child reports any failure, then exits)
            error_file.write_text(traceback.format_exc())
            os._exit(1)
        os._exit(0)
    return os.waitpid(pid, 0)[1]


def plan(model: str, synth: str, work: Path, seed: int, n_random: int) -> None:
    torch.set_num_threads(1)
    load_yolos(ModelSpec(model))  # imports transformers' YOLOS modules once, before the children fork
    log_file = work / "events.json"

    def reference() -> None:
        log: list[str] = []
        _watch(None, log)
        _write(model, synth, work / "reference.h5")
        log_file.write_text(json.dumps(log))

    started = time.perf_counter()
    status = _child(reference, work / "reference.err")
    duration = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"reference run failed: {(work / 'reference.err').read_text()}")
    events = json.loads(log_file.read_text())
    # Building the partial file (up to os.replace), where every kill leaves the same state: its first
    # three calls, the middle one and the move. After it: every open, flush, close and in-place
    # attribute update, and every 12th dataset write (two per batch).
    moved = events.index("os.replace")
    chosen = [0, 1, 2, moved // 2, moved]
    chosen += [k for k in range(moved + 1, len(events)) if events[k] not in _REPEATED or k % 12 == 0]
    rng = np.random.default_rng(seed)
    tries = [("event", k, f"{k}:{events[k]}") for k in chosen]
    tries += [("delay", float(d), f"after {d:.3f}s") for d in rng.uniform(0, duration, n_random)]
    results = []
    for index, (kind, where, label) in enumerate(tries):
        out, err = work / f"try{index}.h5", work / f"try{index}.err"

        def killed(kind=kind, where=where, out=out) -> None:
            if kind == "event":
                _watch(int(where), [])
            else:
                threading.Timer(where, os.kill, (os.getpid(), signal.SIGKILL)).start()
            _write(model, synth, out)

        first = _child(killed, err)
        second = _child(lambda out=out: _write(model, synth, out), err)
        results.append(
            {
                "label": label,
                "file": out.name,
                "killed": os.WIFSIGNALED(first) and os.WTERMSIG(first) == signal.SIGKILL,
                "resume_status": second,
                "error": err.read_text() if err.exists() else "",
            }
        )
    (work / "results.json").write_text(json.dumps({"events": len(events), "duration": duration, "tries": results}))


def pause(model: str, synth: str, out: Path, marker: Path) -> None:
    """Write ``out`` until the first batch's features are written, then announce it in ``marker`` and sleep."""
    real = writer._write_batch

    def write_then_sleep(*args, **kwargs):
        real(*args, **kwargs)
        marker.write_text(str(os.getpid()))
        time.sleep(600)

    writer._write_batch = write_then_sleep
    _write(model, synth, out)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "plan":
        plan(args[0], args[1], Path(args[2]), int(args[3]), int(args[4]))
    else:
        pause(args[0], args[1], Path(args[2]), Path(args[3]))
