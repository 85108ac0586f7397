"""The CLI contracts other stages and checks rely on, through click's CliRunner."""

import json

import pytest
from click.testing import CliRunner
from conftest import real_data

from probe_kit.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("cache", "data", "evaluate", "reference"):
        assert name in result.output


def test_synth_export_evaluate_round_trip(tmp_path, tiny_model):
    assert run("data", "synth", "--out", tmp_path / "s", "--frames", 6, "--seed", 2).exit_code == 0
    result = run("data", "export-coco", "--data", f"synth:{tmp_path / 's'}", "--out", tmp_path / "gt.json")
    assert result.exit_code == 0, result.output
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert gt["images"][0]["file_name"] == "SYNTH-01/000001.jpg"
    assert {a["category_id"] for a in gt["annotations"]} == {1}

    live = run("evaluate", "--model", tiny_model, "--data", f"synth:{tmp_path / 's'}", "--out", tmp_path / "m.json")
    assert live.exit_code == 0, live.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert -1 <= metrics[key] <= 1
    dets = tmp_path / "m_detections.json"
    assert len(json.loads(dets.read_text())) == 6 * 5  # every detection token of every image, no cut

    rescored = run("evaluate", "--gt", tmp_path / "gt.json", "--detections", dets, "--out", tmp_path / "r.json")
    assert rescored.exit_code == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["AP"] == metrics["AP"] and again["AP50"] == metrics["AP50"]


def test_cache_then_evaluate_cache_and_info(tmp_path, tiny_model, synth_dir):
    out = tmp_path / "c.h5"
    result = run(
        "cache",
        "--model",
        tiny_model,
        "--data",
        f"synth:{synth_dir}",
        "--layers",
        "2,4",
        "--tokens",
        "det,cls",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    info = run("cache", "info", out)
    assert info.exit_code == 0 and "layers:       2, 4" in info.output and "12 of 12" in info.output
    cached = run("evaluate", "--cache", out, "--out", tmp_path / "mc.json")
    live = run("evaluate", "--model", tiny_model, "--data", f"synth:{synth_dir}", "--out", tmp_path / "ml.json")
    assert cached.exit_code == live.exit_code == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("mc.json", "ml.json"))
    assert a["AP"] == pytest.approx(b["AP"], abs=1e-6)


def test_export_coco_of_real_mot17_marks_ignore_regions_as_crowd(tmp_path):
    root = real_data("MOT17")
    result = run("data", "export-coco", "--data", f"mot17:{root}", "--sequences", "02", "--out", tmp_path / "gt.json")
    assert result.exit_code == 0
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert gt["images"][0]["file_name"] == "MOT17-02-FRCNN/000001.jpg"
    crowd = [a for a in gt["annotations"] if a["iscrowd"] == 1]
    persons = [a for a in gt["annotations"] if a["iscrowd"] == 0]
    assert len(persons) == 88 and len(crowd) > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate", "--data", "kitti:/nowhere", "--out", "m.json"], "expected mot17:ROOT"),
        (["cache", "info", "missing.h5"], "missing.h5: no such cache file"),
        (["evaluate", "--gt", "nope.json", "--detections", "nope.json", "--out", "m.json"], "nope.json: no such"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_cache_with_out_of_range_layer_writes_nothing(tmp_path, tiny_model, synth_dir):
    result = CliRunner().invoke(
        cli,
        [
            "cache",
            "--model",
            str(tiny_model),
            "--data",
            f"synth:{synth_dir}",
            "--layers",
            "13",
            "--out",
            str(tmp_path / "c.h5"),
        ],
    )
    assert result.exit_code == 1
    assert "layer 13 out of range" in result.output
    assert not (tmp_path / "c.h5").exists()


def test_unreadable_image_names_the_file(tmp_path, tiny_model):
    run("data", "synth", "--out", tmp_path / "s", "--frames", 3, "--seed", 2)
    (tmp_path / "s/train/SYNTH-01/img1/000002.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            f"synth:{tmp_path / 's'}",
            "--out",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 1
    assert "000002.jpg: unreadable image" in result.output
    assert not (tmp_path / "m.json").exists()


def test_python_dash_m_works():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "probe_kit", "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "probe-kit" in out.stdout
