"""Nothing non-finite becomes a number: damaged weights, features, model outputs, plug-in results and result files
are refused where they arise, in one line naming the culprit (issue: no number from a broken input)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_tiny_cache
from safetensors.torch import load_file, save_file

import probe_kit
from probe_kit.analyzers import AnalyzerResult, _registry, check_result, run_analyzer
from probe_kit.cli.main import cli
from probe_kit.io import write_json


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("finite") / "c.h5")


@pytest.fixture(scope="module")
def exits(cache, tmp_path_factory):
    return probe_kit.train_exits(cache, "2", tmp_path_factory.mktemp("finite-exits") / "exits", epochs=1)


def _one_line_error(result, *names: str) -> None:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]  # progress bars aside
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for name in names:
        assert name in errors[0], (name, errors[0])


def test_a_nan_in_one_exit_head_weight_is_refused_naming_file_and_tensor(exits, synth_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exits, broken)
    weights = load_file(broken / "heads.safetensors")
    name = sorted(weights)[0]
    weights[name] = (
        weights[name].clone().flatten().index_fill(0, torch.tensor([0]), float("nan")).view_as(weights[name])
    )
    save_file(weights, broken / "heads.safetensors")
    args = ["evaluate-exits", "--exits", str(broken), "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "e")]
    _one_line_error(CliRunner().invoke(cli, args), "heads.safetensors", name, "NaN")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_cache_features_are_refused_naming_layer_and_row(cache, tmp_path, value):
    broken = tmp_path / "c.h5"
    shutil.copy(cache, broken)
    with h5py.File(broken, "r+") as handle:
        handle["layers/3/det"][11, 0, 0] = value  # the last image: one the lens scores
    args = ["analyze", "lens", "--cache", str(broken), "--layers", "3", "--out", str(tmp_path / "lens")]
    _one_line_error(CliRunner().invoke(cli, args), "layers/3/det row 11", "NaN or infinity")
    assert not (tmp_path / "lens").exists()
    verify = CliRunner().invoke(cli, ["cache", "verify", str(broken)])  # after its hashing progress bar
    assert verify.exit_code == 1 and "layers/3/det row 11 holds NaN" in verify.output.strip().splitlines()[-1]


def test_nan_model_outputs_are_refused_before_scoring(exits, synth_dir, tmp_path):
    broken = tmp_path / "overflow"
    shutil.copytree(exits, broken)
    weights = load_file(broken / "heads.safetensors")
    for name in ("heads.2.classifier.layers.1.weight", "heads.2.classifier.layers.2.weight"):
        weights[name] = torch.full_like(weights[name], 1e30)  # finite weights whose logits overflow: inf - inf
    save_file(weights, broken / "heads.safetensors")
    args = ["evaluate-exits", "--exits", str(broken), "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "e")]
    _one_line_error(CliRunner().invoke(cli, args), "exit 2: its outputs for", "NaN or infinity")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({3: {"AP50": 7.0}}, "AP50 = 7.0; COCO AP lies in [0, 1]"),
        ({3: {"AP50": float("nan")}}, "AP50 = nan; a metric must be finite"),
        ({3: {"AP50": 0.5, "kl": float("inf")}}, "kl = inf; a metric must be finite"),
        ({3: {"AP50": 0.5}, 9: {"AP50": 0.5}}, "returned layers [9] that were not asked for"),
    ],
)
def test_a_plugin_result_is_checked_against_its_declared_metrics(cache, metrics, message):
    @_registry.register("bad-readout", "returns what it likes", role="readout", metrics={"AP50": "AP50"})
    def run(cache, layers, seed=0):
        return AnalyzerResult("bad-readout", {}, seed, metrics, cache.fingerprint)

    try:
        with pytest.raises(
            ValueError, match=r"analyzer bad-readout: .*" + message.replace("[", r"\[").replace("]", r"\]")
        ):
            run_analyzer("bad-readout", cache, "3")
    finally:
        _registry._REGISTRY.pop("bad-readout", None)


def test_coco_no_ground_truth_minus_one_is_a_valid_readout_value():
    info = _registry.AnalyzerInfo("x", "x", lambda *a, **k: None, role="readout", metrics=(("AP50", "AP50"),))
    check_result(info, AnalyzerResult("x", {}, 0, {3: {"AP50": -1.0}}, "f"), (3,))


def test_result_files_are_strict_json_and_a_nan_names_the_file_and_key(tmp_path):
    with pytest.raises(ValueError, match=r"r\.json: refusing to write a non-finite number \(exits\.4\.AP50 = nan\)"):
        write_json(tmp_path / "r.json", {"exits": {"4": {"AP50": float("nan")}}})
    assert not (tmp_path / "r.json").exists() and list(tmp_path.iterdir()) == []
    write_json(tmp_path / "ok.json", {"a": [1.0, 2]})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"a": [1.0, 2]}


def test_an_exits_folder_whose_model_record_was_edited_is_refused(exits, synth_dir, tmp_path):
    """An edited input size (or model) in config.json would score the heads on inputs they never saw."""
    edited = tmp_path / "edited"
    shutil.copytree(exits, edited)
    config = json.loads((edited / "config.json").read_text())
    config["base_model"]["processor"]["size"] = {"shortest_edge": 512, "longest_edge": 1333}
    (edited / "config.json").write_text(json.dumps(config))
    args = ["evaluate-exits", "--exits", str(edited), "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "e")]
    _one_line_error(CliRunner().invoke(cli, args), "config.json", "base_model differs from the model record")
    assert not (tmp_path / "e").exists()
