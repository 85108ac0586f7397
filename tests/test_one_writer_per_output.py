"""One writer per output: while one process writes an output, every stage that would write the same one is
refused by name, writes nothing, and a lock left by a killed process never blocks the next run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_tiny_cache

import probe_kit
from probe_kit.cli.main import cli
from probe_kit.io import output_lock


@pytest.fixture(scope="module")
def study(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("writers")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5")
    exits = probe_kit.train_exits(cache, "2", folder / "exits", epochs=1)
    results = folder / "study" / "results"
    assert (
        CliRunner()
        .invoke(cli, ["analyze", "lens", "--cache", str(cache), "--layers", "2,4", "--out", str(results / "lens")])
        .exit_code
        == 0
    )
    (folder / "exp.yaml").write_text(f"name: t\nsynth: {{frames: 6, seed: 1, size: 96}}\nmodel: {tiny_model}\n")
    return {
        "cache": cache,
        "exits": exits,
        "results": results,
        "data": f"synth:{synth_dir}",
        "folder": folder,
        "model": tiny_model,
    }


def _stages(s: dict, out: Path) -> dict[str, list[str]]:
    timing = ["--timing-images", "1", "--timing-repeats", "3"]
    return {
        "cache": ["cache", "--model", str(s["model"]), "--data", s["data"], "--out", str(out)],
        "analyze": ["analyze", "flops", "--cache", str(s["cache"]), "--out", str(out)],
        "train-exits det": ["train-exits", "--cache", str(s["cache"]), "--layers", "2", "--out", str(out)],
        "train-exits dense": [
            "train-exits",
            "--cache",
            str(s["cache"]),
            "--layers",
            "2",
            "--head",
            "dense",
            "--out",
            str(out),
        ],
        "evaluate-exits": [
            "evaluate-exits",
            "--exits",
            str(s["exits"]),
            "--data",
            s["data"],
            *timing,
            "--out",
            str(out),
        ],
        "evaluate": ["evaluate", "--model", str(s["model"]), "--data", s["data"], "--out", str(out)],
        "decide": ["decide", "--results", str(s["results"]), "--out", str(out)],
        "report": ["report", "--results", str(s["results"].parent), "--out", str(out)],
        "run": ["run", str(s["folder"] / "exp.yaml"), "--out", str(out)],
        "data synth": ["data", "synth", "--out", str(out), "--frames", "3"],
    }


@pytest.mark.parametrize(
    "stage",
    [
        "cache",
        "analyze",
        "train-exits det",
        "train-exits dense",
        "evaluate-exits",
        "evaluate",
        "decide",
        "report",
        "run",
        "data synth",
    ],
)
def test_a_second_writer_of_one_output_is_refused_by_name(study, tmp_path, stage):
    out = tmp_path / "out"
    with output_lock(out, "the first writer"):  # as a first process writing ``out`` holds it
        result = CliRunner().invoke(cli, _stages(study, out)[stage])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and str(out) in errors[0] and "another process is writing" in errors[0], result.output
    assert f".{out.name}.lock" in errors[0] and not out.exists()


def test_det_and_dense_heads_trained_into_one_folder_at_once_leave_one_design(study, tmp_path):
    """The issue's case: ``train-exits`` det and, while it runs, ``--head dense`` into the same --out."""
    out = tmp_path / "exits"
    base = [sys.executable, "-m", "probe_kit", "train-exits", "--cache", str(study["cache"]), "--layers", "2"]
    first = subprocess.Popen([*base, "--epochs", "200", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".exits.lock"
        deadline = time.monotonic() + 60
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first writer never took its lock"
        second = subprocess.run(
            [*base, "--head", "dense", "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
        )
        assert second.returncode == 1 and "another process is writing it" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)


def test_a_lock_left_by_a_killed_writer_never_blocks_the_next_run(study, tmp_path):
    out = tmp_path / "exits"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, pathlib; from probe_kit.io import output_lock\n"
            f"with output_lock(pathlib.Path({str(out)!r}), 'x'):\n    os.kill(os.getpid(), 9)",
        ],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL and (tmp_path / ".exits.lock").exists()  # left behind
    args = ["train-exits", "--cache", str(study["cache"]), "--layers", "2", "--epochs", "1", "--out", str(out)]
    rerun = CliRunner().invoke(cli, args)
    assert rerun.exit_code == 0, rerun.output
    assert (out / "config.json").is_file() and not (tmp_path / ".exits.lock").exists()
