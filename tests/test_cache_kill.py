"""The cache writer survives SIGKILL anywhere, and one writer at a time may write a file.

Every kill is a real SIGKILL of a real process (see cache_kill_driver.py); each killed run is
rerun and the result compared, dataset by dataset and attribute by attribute, with an
uninterrupted run. ``created`` is left out of the comparison: it is the wall-clock time the
file was created, so two uninterrupted runs differ in it too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_tiny_cache

from probe_kit.cache.reader import FeatureCache

DRIVER = Path(__file__).with_name("cache_kill_driver.py")


def _contents(path: Path) -> tuple[dict, dict]:
    """(root attributes but ``created``, every dataset's values) of an HDF5 file."""
    with h5py.File(path, "r") as h5:
        attrs = {k: v for k, v in h5.attrs.items() if k != "created"}
        data: dict = {}
        h5.visititems(lambda name, obj: data.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return attrs, data


def assert_same_cache(expected: Path, actual: Path) -> None:
    attrs_a, data_a = _contents(expected)
    attrs_b, data_b = _contents(actual)
    assert sorted(attrs_a) == sorted(attrs_b)
    for key, value in attrs_a.items():
        assert np.array_equal(value, attrs_b[key]), key
    assert sorted(data_a) == sorted(data_b)
    for name, values in data_a.items():
        other = data_b[name]
        assert values.shape == other.shape and values.dtype == other.dtype, name
        if values.dtype == object:  # ragged rows and strings
            assert all(np.array_equal(x, y) for x, y in zip(values, other)), name
        else:
            np.testing.assert_array_equal(values, other, err_msg=name)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(DRIVER.parent)}


def test_kill_anywhere_then_rerun_gives_the_uninterrupted_cache(tiny_model, synth_dir, tmp_path):
    subprocess.run(
        [sys.executable, str(DRIVER), "plan", str(tiny_model), str(synth_dir), str(tmp_path), "0", "3"],
        check=True,
        env=_env(),
        timeout=300,
    )
    report = json.loads((tmp_path / "results.json").read_text())
    tries = report["tries"]
    assert len(tries) >= 20 and report["events"] > 100  # creation, three batches, final attributes
    for t in tries:
        assert t["resume_status"] == 0, f"kill {t['label']}: rerun failed:\n{t['error']}"
        if t["label"][0].isdigit():
            assert t["killed"], t["label"]  # a kill before a watched call always happens
        assert_same_cache(tmp_path / "reference.h5", tmp_path / t["file"])
    assert sum(t["killed"] for t in tries) >= 20
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no .partial file, no lock file


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "probe_kit", *args]


def test_second_writer_is_refused_and_a_killed_writer_resumes(tiny_model, synth_dir, tmp_path):
    out, marker = tmp_path / "c.h5", tmp_path / "paused"
    first = subprocess.Popen(
        [sys.executable, str(DRIVER), "pause", str(tiny_model), str(synth_dir), str(out), str(marker)], env=_env()
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the first writer never reached its first batch"
        cache_args = [
            "cache",
            "--model",
            str(tiny_model),
            "--data",
            f"synth:{synth_dir}",
            "--tokens",
            "det,patch,cls",
            "--batch-size",
            "4",
            "--attention",
            "--out",
            str(out),
        ]
        second = subprocess.run(_cli(*cache_args), check=False, capture_output=True, text=True, env=_env(), timeout=120)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another process is writing this cache" in lines[0], second.stderr
        with pytest.raises(ValueError, match="another process has this cache open for writing"):
            FeatureCache(out, allow_incomplete=True)
    finally:
        first.send_signal(signal.SIGKILL)  # killed mid-extraction, after the first batch's write
        first.wait()
    options = {"tokens": ("det", "patch", "cls"), "attention": True}
    write_tiny_cache(tiny_model, synth_dir, out, **options)  # resumes the killed writer's file
    write_tiny_cache(tiny_model, synth_dir, tmp_path / "reference.h5", **options)
    assert_same_cache(tmp_path / "reference.h5", out)
