"""One writer per output, one policy for an existing one: while one process writes an output, every stage that
would write the same one is refused by name, writes nothing, and a lock left by a killed process never blocks
the next run; an existing output of the same kind is replaced whole, anything else is refused."""

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


# One policy for an existing --out: an output of the same kind is replaced whole once the new one is complete;
# anything else there is refused in one line and left untouched.
FILE_STAGES = ("evaluate", "decide", "report")
FOLDER_STAGES = ("analyze", "train-exits det", "evaluate-exits", "data synth")


@pytest.mark.parametrize("stage", FILE_STAGES + FOLDER_STAGES)
def test_something_else_at_out_is_refused_and_left_untouched(study, tmp_path, stage):
    out = tmp_path / "out"
    if stage in FILE_STAGES:
        out.write_text("my notes\n")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("my notes\n")
    result = CliRunner().invoke(cli, _stages(study, out)[stage])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: --out {out}: exists and is not ") and "Traceback" not in result.output
    assert (out if stage in FILE_STAGES else out / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock, no set-aside folder left


def test_a_rerun_replaces_its_own_output_whole(study, tmp_path):
    """Fine-tuned heads, then frozen heads into the same folder: nothing of the first run is left to be loaded."""
    out = tmp_path / "exits"
    base = ["train-exits", "--cache", str(study["cache"]), "--layers", "2", "--epochs", "1", "--out", str(out)]
    first = CliRunner().invoke(cli, [*base, "--finetune-blocks", "1", "--finetune-epochs", "1"])
    assert first.exit_code == 0 and (out / "blocks.safetensors").is_file(), first.output
    second = CliRunner().invoke(cli, base)
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "heads.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exits"]
    decision = ["decide", "--results", str(study["results"]), "--out", str(tmp_path / "d.json")]
    assert [CliRunner().invoke(cli, decision).exit_code for _ in range(2)] == [0, 0]


def test_a_failed_or_killed_replacement_leaves_the_previous_output(tmp_path):
    from probe_kit.cli.outputs import EXITS, dir_out, guarded

    out = tmp_path / "exits"
    out.mkdir()
    (out / "config.json").write_text('{"old": 1}')
    with pytest.raises(KeyboardInterrupt), guarded(dir_out(out, EXITS)):
        assert not out.exists()  # set aside while the new one is made
        out.mkdir()
        (out / "heads.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exits"]
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == '{"old": 1}'

    # A SIGKILL while replacing leaves the old folder set aside and a half-made one in its place: the next run
    # starts from the old one, and replaces it only when it succeeds.
    out.rename(tmp_path / ".exits.previous")
    out.mkdir()
    (out / "heads.safetensors").write_bytes(b"half")
    with guarded(dir_out(out, EXITS)):
        assert not out.exists() and (tmp_path / ".exits.previous" / "config.json").is_file()
        out.mkdir()
        (out / "config.json").write_text('{"new": 1}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exits"]
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == '{"new": 1}'


def test_report_names_missing_stages_and_strict_refuses_them(study, tmp_path):
    out = tmp_path / "r.html"
    args = ["report", "--results", str(study["results"].parent), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and out.is_file()
    assert "not measured yet" in result.stderr and "probe-linear" in result.stderr and "decision" in result.stderr
    strict = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "s.html"), "--strict"])
    assert strict.exit_code == 1 and "not measured yet: " in strict.output and "(--strict)" in strict.output
    assert not (tmp_path / "s.html").exists()
