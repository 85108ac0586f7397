"""The models a team would deploy instead of exits (issues: exits that pay, and the smaller model): the same model
at a lower input resolution and another checkpoint, scored on the design comparison's held-out images and timed
in its run; an exit setting pays only where no baseline does as well at equal or lower measured latency."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import write_tiny_cache

from probe_kit.cli.main import cli
from probe_kit.decision.design import recommend_design
from probe_kit.heads.pipeline import Timing

TIMING = Timing(images=1, repeats=3, max_repeats=3)


@pytest.fixture(scope="module")
def compared(tiny_model, synth_dir, tmp_path_factory):
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.heads.designs import compare_designs
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.training import train_exits

    folder = tmp_path_factory.mktemp("baselines")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5")
    exits = train_exits(cache, (2, 4), folder / "exits", "det", seed=0, opts=ExitTraining(epochs=1), progress=False)
    data = parse_data_spec(f"synth:{synth_dir}")
    result = compare_designs(
        [exits], data, ("confidence",), timing=TIMING, progress=False,
        baseline_resolutions=(0.5,), baseline_models=(str(tiny_model),),
    )  # fmt: skip
    return result, data


def test_a_baseline_of_the_reference_models_own_checkpoint_scores_its_full_model(compared, tiny_model):
    result, _ = compared
    same = next(b for b in result["baselines"] if b["kind"] == "model")
    assert same["model"] == str(tiny_model) and same["blocks"] == 4
    # two paths to one number: the exits' recording of the final layer and a plain run of the checkpoint
    assert same["AP50"] == pytest.approx(result["full_model"]["AP50"], abs=1e-9)
    assert same["gflops"] == pytest.approx(result["full_model"]["gflops"])
    assert set(same["latency"]) >= {"median_ms", "iqr_ms"} and same["measured_speedup"]["ratio"] > 0


def test_a_lower_resolution_baseline_is_the_model_run_at_that_size_on_the_scored_images(compared, tiny_model):
    from probe_kit.metrics.coco import evaluate, ground_truth_dict
    from probe_kit.models.loading import ModelSpec, load_yolos, person_label_index
    from probe_kit.models.predict import sample_detections

    result, data = compared
    low = next(b for b in result["baselines"] if b["kind"] == "resolution")
    model, processor = load_yolos(ModelSpec(str(tiny_model)))
    assert low["fraction"] == 0.5 and low["shortest_edge"] == processor.size["shortest_edge"] // 2
    assert low["input_size"] == [low["shortest_edge"]] * 2  # the synthetic frames are square
    # by hand: each scored image resized to that size by PIL, one forward pass each, scored by pycocotools
    scored = set(result["scored_image_ids"])
    samples = [s for s in data.load() if s.image_id in scored]
    side = low["shortest_edge"]
    detections = []
    for sample in samples:
        image = sample.load_image().resize((side, side))
        pixels = processor(images=[image], do_resize=False, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(pixel_values=pixels)
        detections += sample_detections(out.logits, out.pred_boxes, [sample], person_label_index(model.config))
    assert low["AP50"] == pytest.approx(evaluate(ground_truth_dict(samples), detections)["AP50"], abs=0.02)
    full = result["full_model"]["gflops"]
    assert low["flops_speedup"] == pytest.approx(full / low["gflops"]) and low["flops_speedup"] > 2  # 1/4 the tokens


def _result(setting_ms: float, ap50: float, baselines: list[dict]) -> dict:
    ratio = 10.0 / setting_ms
    setting = {
        "exits_dir": "/x", "head": "det", "finetuned_blocks": [], "policy": "static", "threshold": None, "layer": 6,
        "AP50": ap50, "mean_gflops": 0.5, "flops_speedup": 2.0, "bound": False,
        "latency": {"median_ms": setting_ms, "iqr_ms": 0.1},
        "measured_speedup": {"ratio": ratio, "round_ratio_iqr": [ratio - 0.05, ratio + 0.05],
                             "ci95": [ratio - 0.1, ratio + 0.1], "measurable": True},
    }  # fmt: skip
    full = {**setting, "layer": 12, "AP50": 0.8, "mean_gflops": 1.0, "flops_speedup": 1.0}
    full = {k: v for k, v in full.items() if k not in ("latency", "measured_speedup")}
    return {
        "scored_image_ids": [1, 2],
        "full_model": {"AP50": 0.8, "gflops": 1.0, "latency": {"median_ms": 10.0, "iqr_ms": 0.2}},
        "max_ap50_loss": 0.05,
        "designs": [full, setting],
        "baselines": baselines,
    }


def _baseline(name: str, ap50: float, median_ms: float) -> dict:
    ratio = 10.0 / median_ms
    return {
        "name": name, "kind": "resolution", "AP50": ap50, "gflops": 0.5, "flops_speedup": 2.0,
        "latency": {"median_ms": median_ms, "iqr_ms": 0.1},
        "measured_speedup": {"ratio": ratio, "round_ratio_iqr": [ratio, ratio], "measurable": True},
    }  # fmt: skip


def test_an_exit_setting_that_pays_is_beaten_by_a_baseline_as_accurate_and_as_fast():
    alone = recommend_design(_result(5.0, 0.78, []))
    assert alone["verdict"] == "early exit pays" and alone["judgements"]["1"] == "pays"
    beaten = recommend_design(_result(5.0, 0.78, [_baseline("half size", 0.79, 4.9)]))
    assert beaten["judgements"]["1"] == "beaten by a baseline" and beaten["verdict"] == "not viable"
    assert any("half size does as well or better (AP50 0.790" in line for line in beaten["rationale"])
    (line,) = beaten["baselines"]
    assert line["best_exit_as_fast"] is None and "no timed exit setting was measured as fast" in line["line"]
    slower = recommend_design(_result(5.0, 0.78, [_baseline("half size", 0.79, 5.5)]))
    assert slower["verdict"] == "early exit pays"
    assert slower["baselines"][0]["exit_minus_baseline_ap50"] == pytest.approx(-0.01)
    assert "the baseline is better by 0.010 AP50" in slower["baselines"][0]["line"]
    worse = recommend_design(_result(5.0, 0.78, [_baseline("half size", 0.60, 4.0)]))
    assert worse["verdict"] == "early exit pays" and worse["baselines"][0]["best_exit_as_fast"] is None


@pytest.mark.parametrize(
    "field,value,message",
    [("AP50", float("nan"), "AP50: expected a finite number in [0, 1]"), ("AP50", 1.5, "AP50"),
     ("gflops", -1, "gflops: expected a positive finite number"), ("latency", {}, "latency: expected a positive")],
)  # fmt: skip
def test_a_damaged_baseline_row_is_refused_naming_it(field, value, message):
    row = {**_baseline("half size", 0.7, 4.0), field: value}
    with pytest.raises(ValueError, match=rf"--designs: baselines\[0\]: {message[:20]}"):
        recommend_design(_result(5.0, 0.78, [row]))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--policies", "confidence", "--baseline-resolutions", "1.5"], "expected distinct fractions"),
        (["--policies", "confidence", "--baseline-resolutions", "0.5,0.5"], "expected distinct fractions"),
        (["--baseline-resolutions", "0.5"], "--baseline-resolutions applies to the design comparison"),
        (["--baseline-model", "reference"], "--baseline-model applies to the design comparison"),
    ],
)
def test_baseline_options_are_refused_in_one_line(extra, message, tmp_path, synth_dir):
    exits = tmp_path / "exits"
    exits.mkdir()
    args = ["evaluate-exits", "--exits", str(exits), "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_the_cli_writes_baselines_beside_the_designs(compared, tiny_model, synth_dir, tmp_path):
    result, _ = compared
    exits = json.loads(json.dumps(result["folders"][0]["exits_dir"]))
    args = ["evaluate-exits", "--exits", exits, "--data", f"synth:{synth_dir}", "--policies", "confidence"]
    timing = ["--timing-images", "1", "--timing-repeats", "3", "--baseline-resolutions", "0.5"]
    run = CliRunner().invoke(cli, [*args, *timing, "--baseline-model", str(tiny_model), "--out", str(tmp_path / "o")])
    assert run.exit_code == 0, run.output
    written = json.loads((tmp_path / "o" / "result.json").read_text())
    assert [b["kind"] for b in written["baselines"]] == ["resolution", "model"]
    assert "baseline " in run.output and "(0.5x): AP50" in run.output


@pytest.mark.parametrize(
    "value,message",
    [
        ([1.5], "exits.designs.baseline_resolutions '1.5': expected distinct fractions of the input size in (0, 1)"),
        ([0.5, 0.5], "exits.designs.baseline_resolutions '0.5,0.5': expected distinct fractions"),
        (["half"], "exits.designs.baseline_resolutions"),
        ("reference", "exits.designs.baseline_models"),
    ],
)
def test_yaml_baselines_are_checked_when_the_study_loads(value, message, tmp_path, tiny_model):
    import yaml

    from probe_kit.errors import UserError
    from probe_kit.experiment import load_experiment

    key = "baseline_models" if isinstance(value, str) else "baseline_resolutions"
    settings = {
        "name": "t",
        "synth": {"frames": 4, "seed": 4, "size": 128, "frames_per_sequence": 4},
        "model": str(tiny_model),
        "exits": {"layers": "2", "designs": {key: value}},
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(UserError, match="exits.designs.baseline") as refused:
        load_experiment(path)
    assert message in str(refused.value) and "\n" not in str(refused.value)
