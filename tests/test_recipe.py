"""The reference-model recipe, run for a few steps on a tiny configuration."""

import json

import numpy as np

from probe_kit.reference.recipe import RecipeConfig, build_model, train_reference

TINY = dict(
    scene_size=128,
    image_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    det_tokens=5,
    batch_size=8,
    lr=2e-3,
    grad_clip=1.0,
    warmup_steps=5,
    steps=40,
    train_frames=48,
    easy_frames=24,
    curriculum_start=10,
    curriculum_end=20,
    heldout_frames=8,
    eval_every=20,
)


def test_loss_goes_down_and_best_checkpoint_is_kept(tmp_path):
    summary = train_reference(RecipeConfig(**TINY), tmp_path / "run", progress=False)
    losses = np.array(summary["losses"])
    assert len(losses) == 40
    assert losses[-10:].mean() < 0.8 * losses[:10].mean()
    assert (tmp_path / "run/best/model.safetensors").is_file()
    history = [json.loads(line) for line in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [20, 40]
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_dense", "AP", "AP50"} <= set(history[0])


def test_same_seed_same_run_and_resume_is_a_no_op(tmp_path):
    cfg = RecipeConfig(**{**TINY, "steps": 6, "eval_every": 3})
    a = train_reference(cfg, tmp_path / "a", progress=False)
    b = train_reference(cfg, tmp_path / "b", progress=False)
    assert a["losses"] == b["losses"]
    again = train_reference(cfg, tmp_path / "a", progress=False)  # resumes from last.pt at step 6
    assert again["step"] == 6 and again["losses"] == []


def test_tokens_are_not_left_at_zero():
    model, _ = build_model(RecipeConfig(**TINY))
    tokens = model.vit.embeddings.detection_tokens[0]
    assert tokens.std() > 0.005 and (tokens[0] != tokens[1]).any()
    # supervision only at the final layer: no auxiliary per-layer loss in the config
    assert model.config.auxiliary_loss is False


def test_defaults_are_the_shipped_recipe():
    from pathlib import Path

    yaml_path = Path(__file__).resolve().parents[1] / "experiments" / "reference_model.yaml"
    assert RecipeConfig.from_yaml(yaml_path) == RecipeConfig()


def test_the_shallow_recipe_is_the_reference_recipe_at_six_blocks():
    """The smaller model a team would train instead of exits: everything but the depth is the reference's recipe
    (data, seeds, schedule, selection), so its run is reproducible from this file and the seed as the reference's."""
    from dataclasses import replace
    from pathlib import Path

    yaml_path = Path(__file__).resolve().parents[1] / "experiments" / "shallow_reference.yaml"
    assert RecipeConfig.from_yaml(yaml_path) == replace(RecipeConfig(), num_layers=6)


def test_a_shallower_model_trains_the_same_from_the_same_recipe_and_seed(tmp_path):
    cfg = RecipeConfig(**{**TINY, "num_layers": 1, "steps": 4, "eval_every": 2})  # a few steps, half TINY's depth
    assert build_model(cfg)[0].config.num_hidden_layers == 1
    a = train_reference(cfg, tmp_path / "a", progress=False)
    b = train_reference(cfg, tmp_path / "b", progress=False)
    assert len(a["losses"]) == 4 and a["losses"] == b["losses"]


def test_a_budget_spent_before_the_first_evaluation_claims_no_best_checkpoint_and_keeps_the_state(tmp_path):
    import torch
    import yaml
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    args = ["reference", "train", "--config", str(config), "--out", str(tmp_path / "run"), "--budget-minutes", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "no best checkpoint yet" in result.output and "-> " not in result.output
    assert not (tmp_path / "run" / "best").exists()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 0 and state["best_ap50"] == -1.0
