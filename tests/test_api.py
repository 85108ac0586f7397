"""The Python front door: lazy, and a whole small study through it."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest

import probe_kit


def test_import_is_lazy_and_fast():
    heavy = "('torch', 'transformers', 'h5py')"
    code = f"import sys, probe_kit; probe_kit.__version__; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_does_not_import_torch():
    code = "import sys; from probe_kit.cli.main import cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_attribute_is_an_attribute_error():
    try:
        probe_kit.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_study_in_python(tiny_model, synth_dir, tmp_path):
    cache = probe_kit.write_cache(
        model=str(tiny_model),
        data=f"synth:{synth_dir}",
        out=tmp_path / "c.h5",
        layers="all",
        batch_size=4,
        progress=False,
    )
    with cache:
        assert cache.complete and cache.layers == (1, 2, 3, 4)
    lens = probe_kit.analyze("lens", tmp_path / "c.h5", layers=[2, 4], out=tmp_path / "study" / "results" / "lens")
    assert set(lens.layers) == {2, 4} and 0.0 <= lens.layers[4]["AP50"] <= 1.0
    assert (tmp_path / "study" / "results" / "lens" / "result.json").is_file()
    flops = probe_kit.analyze("flops", tmp_path / "c.h5", out=tmp_path / "study" / "results" / "flops")
    from_objects = probe_kit.decide([lens, flops])
    from_folder = probe_kit.decide(tmp_path / "study" / "results")
    assert from_objects.to_json()["exits"] == from_folder.to_json()["exits"]
    assert "lens" in probe_kit.list_analyzers()
    report = probe_kit.build_report(tmp_path / "study")
    assert report == tmp_path / "study" / "report.html" and report.stat().st_size > 0


def test_the_cli_goes_through_the_front_door(tmp_path, monkeypatch):
    """``analyze``, ``report`` and ``evaluate-exits`` (both modes) call ``probe_kit.api``, so the CLI and the
    Python API cannot drift apart."""
    from click.testing import CliRunner

    from probe_kit import api
    from probe_kit.cli.main import cli

    calls = []

    def spy(name):
        signature = inspect.signature(getattr(api, name))

        def called(*args, **kwargs):
            signature.bind(*args, **kwargs)  # the CLI's call must fit the real function (TypeError otherwise)
            calls.append(f"api.{name}")
            raise ValueError(f"api.{name} reached")

        return called

    for name in ("analyze", "build_report", "evaluate_exits", "compare_designs"):
        monkeypatch.setattr(api, name, spy(name))
    runner = CliRunner()
    analyzed = runner.invoke(cli, ["analyze", "lens", "--cache", str(tmp_path / "c.h5"), "--out", str(tmp_path / "r")])
    (tmp_path / "study").mkdir()
    reported = runner.invoke(cli, ["report", "--results", str(tmp_path / "study"), "--out", str(tmp_path / "r.html")])
    (tmp_path / "synth").mkdir()
    evaluate = ["evaluate-exits", "--exits", str(tmp_path / "x"), "--data", f"synth:{tmp_path / 'synth'}"]
    one = runner.invoke(cli, [*evaluate, "--out", str(tmp_path / "e1")])
    designs = runner.invoke(cli, [*evaluate, "--policies", "oracle", "--out", str(tmp_path / "e2")])
    outputs = (analyzed.output, reported.output, one.output, designs.output)
    assert calls == ["api.analyze", "api.build_report", "api.evaluate_exits", "api.compare_designs"], outputs


def test_the_front_door_refuses_what_it_cannot_use_in_one_value_error(tiny_model, synth_dir, tmp_path):
    """Unknown options, a device this machine lacks and out-of-range thresholds: ``ValueError`` naming them,
    before any work (not a ``TypeError`` or a torch assertion from deep inside)."""
    data = f"synth:{synth_dir}"
    cases = [
        (lambda: probe_kit.write_cache(model=str(tiny_model), data=data, out=tmp_path / "c.h5", bogus=1), "bogus"),
        (lambda: probe_kit.write_cache(model=str(tiny_model), data=data, out=tmp_path / "c.h5", device="foo"), "foo"),
        (lambda: probe_kit.train_exits(tmp_path / "c.h5", "2", tmp_path / "e", bogus=1), "bogus"),
        (lambda: probe_kit.train_exits(tmp_path / "c.h5", "2", tmp_path / "e", device="cuda:99"), "device cuda:99"),
        (lambda: probe_kit.evaluate_exits(tmp_path / "e", data, timing_images=2), "timing_images"),
        (lambda: probe_kit.compare_designs([tmp_path / "e"], data, bogus=1), "bogus"),
        (lambda: probe_kit.compare_designs([tmp_path / "e"], data, thresholds={"confidence": (2.0,)}), "[0, 1]"),
        (lambda: probe_kit.write_cache(model=str(tiny_model), data=tmp_path, out=tmp_path / "c.h5"), "data:"),
    ]
    for call, named in cases:
        with pytest.raises(ValueError, match=re.escape(named)):
            call()
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "e").exists()
