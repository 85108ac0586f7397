"""Experiment files: validated before any work, stages skipped when up to date."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from probe_kit.cli.main import cli
from probe_kit.experiment import DEMO_CONFIG, load_experiment, run_experiment


def _write(tmp_path, **settings):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"name": "x", "synth": {"frames": 5}, "colour": 1}, "unknown key 'colour'"),
        ({"name": "x", "synth": {"frames": 5}, "batch_size": "big"}, "batch_size: expected an integer >= 1"),
        ({"name": "x", "data": "mot17:/nowhere/at/all"}, "data: .*does not exist"),
        ({"name": "x"}, "exactly one of 'data'"),
        ({"name": "x", "synth": {"frams": 5}}, "synth: unknown key 'frams'"),
        (
            {"name": "x", "synth": {"frames": 5}, "analyzers": {"lens": {"epochs": 3}}},
            "analyzers.lens: unknown option 'epochs'",
        ),
        ({"name": "x", "synth": {"frames": 5}, "analyzers": {"nope": {}}}, r"analyzers.nope: unknown analyzer"),
    ],
)
def test_config_errors_name_the_key(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        load_experiment(_write(tmp_path, **settings))


def test_cli_fails_before_any_work(tmp_path):
    path = _write(tmp_path, name="x", synth={"frames": 5}, colour=1)
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "unknown key 'colour'" in result.output
    assert not (tmp_path / "out").exists()


def _here(study: Path, tmp_path: Path) -> Path:
    """A shipped GPU study as this machine can load it: without CUDA its ``device: cuda`` is refused (naming the
    file and key, before any work), so a copy on the CPU is parsed instead."""
    if torch.cuda.is_available():
        return study
    with pytest.raises(ValueError, match=f"{study.name}: device cuda: no CUDA device"):
        load_experiment(study)
    copy = tmp_path / study.name
    copy.write_text(study.read_text().replace("device: cuda", "device: cpu"))
    return copy


def test_shipped_experiments_parse(monkeypatch, tmp_path):
    from conftest import real_data

    assert load_experiment(DEMO_CONFIG).synth is not None
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    monkeypatch.delenv("MOT17_ROOT", raising=False)
    with pytest.raises(ValueError, match="data: .*environment variable that is not set"):
        load_experiment(experiments / "mot17_yolos_small.yaml")
    monkeypatch.setenv("MOT17_ROOT", str(real_data("MOT17")))
    cfg = load_experiment(_here(experiments / "mot17_yolos_small.yaml", tmp_path))
    assert cfg.model == "hustvl/yolos-small" and cfg.shortest_edge == 512 and cfg.val_sequences == ("11", "13")
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations/instances_val2017.json").write_text("{}")
    monkeypatch.setenv("COCO_ROOT", str(coco))
    assert load_experiment(_here(experiments / "coco_person.yaml", tmp_path)).tokens == ("det",)


def test_runs_and_skips_up_to_date_stages(tmp_path, tiny_model):
    path = _write(
        tmp_path,
        name="t",
        synth={"frames": 12, "seed": 4, "size": 128, "frames_per_sequence": 4},
        model=str(tiny_model),
        val_sequences=["SYNTH-03"],
        analyzers={"flops": {}, "lens": {}, "probe-linear": {"epochs": 1, "layers": "2,4"}},
    )
    cfg = load_experiment(path)
    messages: list[str] = []
    decision = run_experiment(cfg, tmp_path / "out", say=messages.append)
    assert decision["exits"][-1] == 4
    probe = json.loads((tmp_path / "out/results/probe-linear/result.json").read_text())
    assert probe["layers"].keys() == {"2", "4"} and probe["split"]["val_groups"] == ["SYNTH-03"]
    assert probe["command"].startswith("probe-kit run")
    messages.clear()
    run_experiment(cfg, tmp_path / "out", say=messages.append)
    assert "[data] synthetic scenes up to date" in messages[0]
    assert sum("up to date" in m for m in messages) == 1 + 3  # data + every analyzer


def test_candidate_exits_are_trained_when_none_is_recommended(tmp_path, tiny_model):
    path = _write(
        tmp_path,
        name="t",
        synth={"frames": 12, "seed": 4, "size": 128, "frames_per_sequence": 4},
        model=str(tiny_model),
        analyzers={"flops": {}, "lens": {}},
        exits={"layers": "decision", "candidates": "2", "epochs": 1, "thresholds": [0.9]},
    )
    messages: list[str] = []
    decision = run_experiment(load_experiment(path), tmp_path / "out", say=messages.append)
    assert decision["verdict"] == "not viable"  # a random model: its final layer does not detect
    assert any("training heads at the candidate layers [2]" in m for m in messages)
    assert json.loads((tmp_path / "out/exits/config.json").read_text())["layers"] == [2, 4]
    assert "candidate layers" in (tmp_path / "out/report.html").read_text()
