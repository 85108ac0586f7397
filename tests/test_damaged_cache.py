"""A cache is checked before it is trusted: a damaged or altered file is refused on open, or by ``cache verify``,
in one line naming the file and what is wrong, never a traceback or a number read from it (issues: a full disk
leaves nothing that claims success; held out by content, and no number from a broken input)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_tiny_cache

from probe_kit.cache.reader import FeatureCache
from probe_kit.cli.main import cli


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("damaged") / "c.h5")


def _damaged(cache, tmp_path, damage) -> str:
    broken = tmp_path / "broken.h5"
    shutil.copy(cache, broken)
    with h5py.File(broken, "r+") as handle:
        damage(handle)
    return str(broken)


def _retyped(handle, name, dtype=None, shape=None):
    values = handle[name][()]
    del handle[name]
    handle[name] = np.zeros(shape or values.shape, dtype=dtype or values.dtype)


def _dangling(handle):
    del handle["layers/2/det"]
    handle["layers/2/det"] = h5py.ExternalLink("gone.h5", "/layers/2/det")


DAMAGE = {
    "no model record": (lambda h: h.attrs.__delitem__("model"), "root attribute 'model' is missing"),
    "no layer group": (lambda h: h.__delitem__("layers/2"), "dataset layers/2/det is missing"),
    "a dangling link": (_dangling, "dataset layers/2/det is missing or unreadable"),
    "another dtype": (lambda h: _retyped(h, "layers/3/det", dtype=np.float64), "layers/3/det is float64"),
    "another hidden size": (lambda h: _retyped(h, "layers/3/det", shape=(12, 5, 16)), r"expected float16\[12, 5, 32\]"),
    "fewer rows": (lambda h: _retyped(h, "final/logits", shape=(5, 3, 3)), r"final/logits is float32\[5, 3, 3\]"),
    "num_written past the rows": (lambda h: h.attrs.modify("num_written", 99), "num_written is 99"),
    "model record not JSON": (lambda h: h.attrs.modify("model", "{"), "root attribute 'model' is not valid JSON"),
    "complete with fewer rows written": (
        lambda h: h.attrs.modify("num_written", 4),
        "marked complete with num_written 4",
    ),
    "layout not an object": (lambda h: h.attrs.modify("layout", "[]"), "root attribute 'layout' is not a JSON object"),
    "negative det tokens": (
        lambda h: h.attrs.modify("layout", '{"num_det": -5, "grid_h": 4, "grid_w": 4}'),
        "root attribute 'layout': expected num_det >= 1",
    ),
    "model record without config": (
        lambda h: h.attrs.modify("model", '{"name": "tiny"}'),
        r"damaged cache record in root attribute 'model or options' \(KeyError: 'config'\)",
    ),
    "no checksums": (lambda h: h.__delitem__("checksums"), "dataset checksums is missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_cache_is_refused_on_open_in_one_line(cache, tmp_path, case):
    damage, message = DAMAGE[case]
    broken = _damaged(cache, tmp_path, damage)
    with pytest.raises(ValueError, match=message):
        FeatureCache(broken)
    for args in (["cache", "verify", broken], ["cache", "info", broken], ["analyze", "lens", "--cache", broken]):
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o")] if args[0] == "analyze" else args)
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)
        assert result.output.startswith("Error: ") and "broken.h5" in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["layers/2/det", "final/pred_boxes"])
def test_verify_finds_rows_zeroed_or_altered_after_they_were_written(cache, tmp_path, where):
    """What a full disk leaves (pre-allocated blocks never written read back as zeros) and a later edit both
    break the checksum recorded as the rows were written; the values stay finite, so only the checksum sees it."""
    assert CliRunner().invoke(cli, ["cache", "verify", str(cache)]).exit_code == 0

    def zero_rows(handle):
        handle[where][7:9] = 0

    zeroed = _damaged(cache, tmp_path, zero_rows)
    result = CliRunner().invoke(cli, ["cache", "verify", zeroed])
    assert result.exit_code == 1, result.output
    assert f"{where} row 7 does not match the checksum" in result.output.strip().splitlines()[-1]

    def nudge(handle):
        values = handle[where][3]
        values.flat[0] = np.nextafter(values.flat[0], np.inf)  # one step: a change no tolerance would see
        handle[where][3] = values

    nudged = _damaged(cache, tmp_path / "..", nudge)
    result = CliRunner().invoke(cli, ["cache", "verify", nudged])
    assert result.exit_code == 1 and f"{where} row 3 does not match" in result.output, result.output
