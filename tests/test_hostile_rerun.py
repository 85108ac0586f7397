"""Cases from the rerun of the hostile-input suite (issue: held out by content, and no number from a broken input),
one per principle: an edited exits folder never scores its training images, a result file outside what it
declares or from another cache never reaches the decision, a damaged design comparison is refused by name, and a
file that is no file or a YAML alias bomb is refused at once instead of hanging."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from click.testing import CliRunner
from conftest import write_tiny_cache

import probe_kit
from probe_kit.cli.main import cli
from probe_kit.heads.pipeline import Timing

TIMING = Timing(images=1, repeats=3, max_repeats=3)


@pytest.fixture(scope="module")
def trained(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5")
    return probe_kit.train_exits(cache, "2", folder / "exits", epochs=1, val_fraction=0.4)


def _edited(folder, tmp_path, edit) -> str:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


EXITS_EDITS = {
    "hashes upper-cased": (
        lambda c: c.update(train_image_sha256=[h.upper() for h in c["train_image_sha256"]]),
        "train_image_sha256: expected .* sha256 digests, 64 lowercase hex characters each",
    ),
    "early-stopping hashes deleted": (
        lambda c: c.pop("holdout_image_sha256"),
        "holdout_image_sha256: expected .* sha256 digests",
    ),
    "hashes of other images": (
        lambda c: c.update(train_image_sha256=["f" * 64] * len(c["train_image_sha256"])),
        "the sha256 recorded for training image .* is not that image's in the cache the heads trained on",
    ),
}


@pytest.mark.parametrize("case", sorted(EXITS_EDITS))
def test_an_exits_folder_with_edited_training_hashes_is_refused_not_scored(trained, synth_dir, tmp_path, case):
    edit, message = EXITS_EDITS[case]
    folder = _edited(trained, tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        probe_kit.evaluate_exits(folder, f"synth:{synth_dir}", thresholds=(0.5,), timing=TIMING)
    control = probe_kit.evaluate_exits(trained, f"synth:{synth_dir}", thresholds=(0.5,), timing=TIMING)
    config = json.loads((trained / "config.json").read_text())
    assert control["dropped_training_images"] == len(config["train_image_ids"]) + len(config["holdout_image_ids"])


def _result(analyzer: str, layers: dict, fingerprint: str = "a" * 16) -> dict:
    return {"analyzer": analyzer, "layers": layers, "cache_fingerprint": fingerprint, "meta": {"role": "readout"}}


RESULTS = {
    "AP50 above 1": ({"lens": _result("lens", {"2": {"AP50": 1.5}})}, "layers.2.AP50: expected a COCO metric in"),
    "negative layer": ({"lens": _result("lens", {"-3": {"AP50": 0.5}})}, "layers: '-3' is not a layer number"),
    "two caches": (
        {"lens": _result("lens", {"2": {"AP50": 0.5}}), "mlp": _result("mlp", {"2": {"AP50": 0.4}}, "b" * 16)},
        "results from different caches cannot be weighed together",
    ),
}


@pytest.mark.parametrize("case", sorted(RESULTS))
def test_a_result_outside_its_declared_metrics_or_from_another_cache_is_refused(tmp_path, case):
    files, message = RESULTS[case]
    for name, data in files.items():
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "result.json").write_text(json.dumps(data))
    run = CliRunner().invoke(cli, ["decide", "--results", str(tmp_path / "results")])
    assert run.exit_code == 1 and message in run.output and len(run.output.strip().splitlines()) == 1, run.output
    assert not (tmp_path / "results" / "decision.json").exists()


def test_a_result_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    (tmp_path / "results" / "lens").mkdir(parents=True)
    os.mkfifo(tmp_path / "results" / "lens" / "result.json")
    started = time.monotonic()
    run = CliRunner().invoke(cli, ["decide", "--results", str(tmp_path / "results")])
    assert run.exit_code == 1 and "not a regular file" in run.output and time.monotonic() - started < 30


def _designs(**changes) -> dict:
    setting = {
        "exits_dir": "/x", "head": "det", "finetuned_blocks": [], "policy": "static", "threshold": None, "layer": 2,
        "AP50": 0.5, "mean_gflops": 0.5, "flops_speedup": 2.0, "bound": False,
        "latency": {"median_ms": 5.0, "iqr_ms": 0.1},
        "measured_speedup": {"ratio": 2.0, "round_ratio_iqr": [1.9, 2.1], "ci95": [1.8, 2.2], "measurable": True},
    }  # fmt: skip
    final = {k: v for k, v in setting.items() if k not in ("latency", "measured_speedup")} | {"flops_speedup": 1.0}
    result = {
        "scored_image_ids": [1],
        "full_model": {"AP50": 0.51, "gflops": 1.0, "latency": {"median_ms": 10.0, "iqr_ms": 0.1}},
        "max_ap50_loss": 0.05,
        "designs": [{**setting, **changes.pop("setting", {})}, {**final, "layer": 4, "AP50": 0.51, "mean_gflops": 1.0}],
    }
    return {**result, **changes}


DESIGNS = {
    "no full model": (_designs(full_model=None), "full_model: expected the full model's numbers"),
    "bound not a boolean": (_designs(setting={"bound": "no"}), r"designs\[0\]: bound: expected true or false"),
    "an interval upside down": (
        _designs(setting={"measured_speedup": {"ratio": 2.0, "round_ratio_iqr": [1.9, 2.1], "ci95": [5, 4]}}),
        "expected intervals as \\[low, high\\] with low <= high",
    ),
    "an absurd ratio": (
        _designs(setting={"measured_speedup": {"ratio": 2.0, "round_ratio_iqr": [1.9, 2.1], "ci95": [1e300, 1e301]}}),
        "expected positive finite ratios up to 1000",
    ),
}


@pytest.mark.parametrize("case", sorted(DESIGNS))
def test_a_damaged_design_comparison_is_refused_by_name(case):
    from probe_kit.decision.design import recommend_design

    result, message = DESIGNS[case]
    with pytest.raises(ValueError, match=message):
        recommend_design(result)
    assert recommend_design(_designs())["verdict"] == "early exit pays"  # the control: the same, undamaged


def test_a_full_model_that_detects_nothing_leaves_no_design_to_recommend():
    from probe_kit.decision.design import recommend_design

    blind = _designs(setting={"AP50": 0.0})
    blind["full_model"]["AP50"] = 0.0
    rec = recommend_design(blind)
    assert rec["verdict"] == "not viable" and rec["design"] is None
    assert "the full model scores AP50 0 on these images" in rec["summary"]


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, tiny_model, synth_dir):
    from probe_kit.errors import UserError
    from probe_kit.experiment import load_experiment

    anchors = ["&a0 [" + ", ".join(['"x"'] * 10) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10**9 leaves
    text = f"name: bomb\ndata: synth:{synth_dir}\nmodel: {tiny_model}\nanalyzers:\n  lens: {{}}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text + f"seed: [{', '.join(anchors)}]\n")
    assert path.stat().st_size < 1024
    started = time.monotonic()
    with pytest.raises(UserError, match="bomb.yaml: seed: expected an integer"):
        load_experiment(path)
    assert time.monotonic() - started < 30


def test_a_study_is_never_written_into_another_commands_output(trained, tmp_path, tiny_model, synth_dir):
    import yaml

    foreign = tmp_path / "exits"
    shutil.copytree(trained, foreign)
    before = sorted(p.name for p in foreign.iterdir())
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "data": f"synth:{synth_dir}", "model": str(tiny_model)}))
    run = CliRunner().invoke(cli, ["run", str(path), "--out", str(foreign)])
    assert run.exit_code == 1 and "exists and is not a study folder (probe-kit run)" in run.output, run.output
    assert sorted(p.name for p in foreign.iterdir()) == before


def test_options_and_yaml_values_are_refused_before_anything_is_written(tmp_path, tiny_model, synth_dir):
    import yaml

    cache = tmp_path / "c.h5"
    args = ["cache", "--model", str(tiny_model), "--data", f"synth:{synth_dir}", "--shortest-edge", "0"]
    run = CliRunner().invoke(cli, [*args, "--out", str(cache)])
    assert run.exit_code == 2 and "--shortest-edge" in run.output and not cache.exists()
    settings = {"name": "n", "data": f"synth:{synth_dir}", "model": str(tiny_model)}
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**settings, "decision": {"max_ap50_loss": float("nan")}}))
    run = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "study")])
    assert run.exit_code == 1 and "n.yaml: decision.max_ap50_loss: expected a finite number" in run.output
    assert not (tmp_path / "study").exists()


def test_a_sequence_whose_frames_folder_is_no_folder_is_refused_by_name(synth_dir, tmp_path):
    scenes = tmp_path / "scenes"
    shutil.copytree(synth_dir, scenes)
    frames = scenes / "train" / "SYNTH-01" / "img1"
    shutil.rmtree(frames)
    frames.symlink_to(frames)  # a symlink loop
    run = CliRunner().invoke(cli, ["data", "export-coco", "--data", f"synth:{scenes}", "--out", str(tmp_path / "g")])
    assert run.exit_code == 1 and f"{frames}: expected the folder of frames seqinfo.ini names" in run.output
