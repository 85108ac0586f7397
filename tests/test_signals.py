"""Signals are handled like errors: SIGTERM (or Ctrl-C) ends a long stage with one line saying what was left,
exit 143 (130), locks and temporary files removed, and nothing that claims success."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_cache

import probe_kit


@pytest.fixture(scope="module")
def study(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5", tokens=("det", "patch"))
    exits = probe_kit.train_exits(cache, "2", folder / "exits", epochs=1)
    (folder / "exp.yaml").write_text(f"name: t\nsynth: {{frames: 40, seed: 1, size: 96}}\nmodel: {tiny_model}\n")
    return {"cache": cache, "exits": exits, "model": tiny_model, "data": f"synth:{synth_dir}", "folder": folder}


def _terminate_when(args: list[str], cwd: Path, started, sig=signal.SIGTERM) -> subprocess.CompletedProcess:
    """Run ``probe-kit ARGS``; once ``started()`` holds (the stage is under way), send ``sig``."""
    child = subprocess.Popen(
        [sys.executable, "-m", "probe_kit", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not started() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "the stage ended before it could be interrupted"
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(args, child.returncode, out, err)


def _stopped(done: subprocess.CompletedProcess, code: int = 143) -> str:
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*") if p.name.endswith((".lock", ".partial", ".tmp"))]


def test_sigterm_during_train_exits_leaves_no_folder_and_no_lock(study, tmp_path):
    args = ["train-exits", "--cache", str(study["cache"]), "--layers", "2", "--epochs", "100000", "--out", "exits"]
    done = _terminate_when(args, tmp_path, lambda: (tmp_path / ".exits.lock").exists())
    line = _stopped(done)
    assert "stopped by SIGTERM" in line and "exits" in line
    assert not (tmp_path / "exits").exists()
    _no_leftovers(tmp_path)


def test_sigterm_during_evaluate_exits_leaves_no_result(study, tmp_path):
    args = [
        "evaluate-exits",
        "--exits",
        str(study["exits"]),
        "--data",
        study["data"],
        "--timing-images",
        "1",
        "--timing-repeats",
        "100000",
        "--out",
        "ev",
    ]
    done = _terminate_when(args, tmp_path, lambda: (tmp_path / ".ev.lock").exists())
    assert "stopped by SIGTERM" in _stopped(done)
    assert not (tmp_path / "ev").exists()
    _no_leftovers(tmp_path)


def test_sigterm_during_cache_leaves_a_cache_that_says_incomplete_and_resumes(study, tmp_path):
    args = ["cache", "--model", str(study["model"]), "--data", study["data"], "--batch-size", "1", "--out", "c.h5"]
    done = _terminate_when(args, tmp_path, lambda: (tmp_path / "c.h5").exists())
    line = _stopped(done)
    assert "stopped by SIGTERM" in line and "c.h5" in line and "rerun" in line
    _no_leftovers(tmp_path)
    resumed = subprocess.run(
        [sys.executable, "-m", "probe_kit", *args], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0 and "cache complete" in resumed.stdout


def test_ctrl_c_during_run_exits_130_and_the_study_resumes(study, tmp_path):
    # A long analyzer after the cache: the signal lands in a stage under way, whatever the machine's speed (the
    # cache of 40 small scenes alone can end before a busy parent has seen its file).
    slow = tmp_path / "slow.yaml"
    slow.write_text((study["folder"] / "exp.yaml").read_text() + "analyzers:\n  probe-linear: {epochs: 100000}\n")
    args = ["run", str(slow), "--out", "study"]
    done = _terminate_when(args, tmp_path, lambda: (tmp_path / "study" / "cache.h5").exists(), signal.SIGINT)
    assert "stopped by Ctrl-C" in _stopped(done, 130)
    _no_leftovers(tmp_path)
