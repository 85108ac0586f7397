"""A full disk leaves nothing that claims success: every stage that writes, run under a file-size limit (a child
process with RLIMIT_FSIZE and SIGXFSZ ignored, so writes fail with EFBIG as on a full disk), exits 1 with one line
naming the path and the cause, and leaves no result, folder or complete-looking cache behind."""

from __future__ import annotations

import errno
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from conftest import write_tiny_cache

import probe_kit
from probe_kit.cache import writer as writer_module
from probe_kit.cli.main import cli


def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def probe_kit_under_limit(limit: int, *args: str, cwd: Path, cause: str = "file too large") -> str:
    """``probe-kit ARGS`` in a child whose files may not grow beyond ``limit`` bytes; returns its error line."""
    done = subprocess.run(
        [sys.executable, "-m", "probe_kit", *args],
        cwd=cwd,
        preexec_fn=_limited(limit),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and cause in errors[0], done.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def study(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("full-disk")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5", tokens=("det", "patch"))
    exits = probe_kit.train_exits(cache, "2", folder / "exits", epochs=1)
    return {"folder": folder, "cache": cache, "exits": exits, "model": tiny_model, "data": f"synth:{synth_dir}"}


def test_cache_on_a_full_disk_leaves_no_cache(study, tmp_path):
    args = ["cache", "--model", str(study["model"]), "--data", study["data"], "--tokens", "det,patch"]
    line = probe_kit_under_limit(20_000, *args, "--out", "c.h5", cwd=tmp_path, cause="allowed by the file-size limit")
    assert line.startswith("Error: c.h5: needs ") and "more for this cache, 19.5 KiB allowed by the file-size" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no cache, no partial file, no lock


@pytest.mark.parametrize(
    ("stage", "written"),
    [
        (["analyze", "lens", "--layers", "2,4", "--out", "out"], "out/result.json"),
        (["train-exits", "--layers", "2", "--epochs", "1", "--out", "out"], "out/heads.safetensors"),
        (["train-exits", "--layers", "2", "--epochs", "1", "--head", "dense", "--out", "out"], "out/heads.safetensors"),
    ],
)
def test_cache_stages_on_a_full_disk_name_the_file_and_leave_nothing(study, tmp_path, stage, written):
    line = probe_kit_under_limit(1_000, *stage[:-2], "--cache", str(study["cache"]), *stage[-2:], cwd=tmp_path)
    assert line.startswith(f"Error: {written}: cannot write (file too large)")
    assert not (tmp_path / "out").exists()


def test_evaluate_exits_decide_and_report_on_a_full_disk(study, tmp_path):
    timing = ["--timing-images", "1", "--timing-repeats", "3"]
    line = probe_kit_under_limit(
        1_000,
        "evaluate-exits",
        "--exits",
        str(study["exits"]),
        "--data",
        study["data"],
        *timing,
        "--out",
        "ev",
        cwd=tmp_path,
    )
    assert "ev/" in line and "cannot write (file too large)" in line and not (tmp_path / "ev").exists()
    results = tmp_path / "study" / "results"
    assert (
        CliRunner()
        .invoke(
            cli, ["analyze", "lens", "--cache", str(study["cache"]), "--layers", "2,4", "--out", str(results / "lens")]
        )
        .exit_code
        == 0
    )
    line = probe_kit_under_limit(1_000, "decide", "--results", str(results), cwd=tmp_path)
    assert f"{results}/decision.json: cannot write" in line and not (results / "decision.json").exists()
    line = probe_kit_under_limit(1_000, "report", "--results", str(tmp_path / "study"), "--out", "r.html", cwd=tmp_path)
    assert line.startswith("Error: r.html: cannot write (file too large)") and not (tmp_path / "r.html").exists()


def test_run_on_a_full_disk_exits_one_naming_the_file(study, tmp_path):
    import yaml

    settings = {"name": "t", "synth": {"frames": 6, "seed": 1, "size": 96}, "model": str(study["model"])}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(settings))
    line = probe_kit_under_limit(1_000, "run", "exp.yaml", "--out", "study", cwd=tmp_path, cause="")
    assert line.startswith("Error: study/") and ("file too large" in line or "file-size limit" in line)


def test_a_write_failing_mid_cache_leaves_it_incomplete_and_a_rerun_finishes_it(study, tmp_path, monkeypatch):
    real, calls = writer_module._write_batch, {"n": 0}

    def full_after_one_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "_write_batch", full_after_one_batch)
    args = ["cache", "--model", str(study["model"]), "--data", study["data"], "--batch-size", "4", "--out"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "c.h5")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert error == [
        f"Error: {tmp_path / 'c.h5'}: writing failed (no space left on device); the cache is left incomplete at 4 of "
        "12 images: free space and rerun to resume"
    ]
    with h5py.File(tmp_path / "c.h5", "r") as handle:
        assert not handle.attrs["complete"] and handle.attrs["num_written"] == 4
    assert CliRunner().invoke(cli, ["cache", "verify", str(tmp_path / "c.h5")]).exit_code == 1
    monkeypatch.setattr(writer_module, "_write_batch", real)
    rerun = CliRunner().invoke(cli, [*args, str(tmp_path / "c.h5")])
    assert rerun.exit_code == 0, rerun.output
    with h5py.File(tmp_path / "c.h5", "r") as handle:
        assert handle.attrs["complete"] and handle.attrs["num_written"] == 12


def test_a_cache_larger_than_the_free_space_is_refused_with_both_numbers(study, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    args = ["cache", "--model", str(study["model"]), "--data", study["data"], "--out", str(tmp_path / "c.h5")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error")][0]
    assert "c.h5: needs" in error and "KiB more for this cache, 4.0 KiB free on" in error
    assert list(tmp_path.iterdir()) == []
