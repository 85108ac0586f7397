"""Exit-training regimes: frozen (heads on cached tokens), finetune (k blocks before each exit), joint (every block
up to the last exit, exit losses weighted by depth, the final layer's own loss in, the epoch with the best holdout
AP50 kept); learning curves logged per exit (issue: can exits pay? not viable vs not trained enough)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import write_tiny_cache
from safetensors.torch import load_file

from probe_kit.cli.main import cli
from probe_kit.heads.finetune import depth_weights
from probe_kit.heads.options import ExitTraining
from probe_kit.training.fit import fit


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("regimes") / "c.h5", tokens=("det", "patch"))


def _train(cache, out, *args):
    base = ["train-exits", "--cache", str(cache), "--layers", "2", "--epochs", "1", "--finetune-epochs", "2"]
    done = CliRunner().invoke(cli, [*base, "--finetune-lr", "1e-3", *args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    return json.loads((out / "config.json").read_text())


def test_joint_trains_every_block_up_to_the_last_exit_and_frozen_none(cache, tiny_model, tmp_path):
    from transformers import YolosForObjectDetection

    base = YolosForObjectDetection.from_pretrained(tiny_model).state_dict()
    joint = _train(cache, tmp_path / "joint", "--regime", "joint")
    assert joint["training"]["regime"] == "joint"
    assert joint["layers"] == [2, 4]  # the final layer (4) joined: its own loss keeps the full model
    assert joint["finetuned_blocks"] == [0, 1, 2, 3]
    blocks = load_file(tmp_path / "joint" / "blocks.safetensors")
    for i in range(4):
        name = f"vit.encoder.layer.{i}.attention.attention.query.weight"
        assert not torch.equal(blocks[name], base[name]), f"block {i + 1} did not move"
    curve = joint["finetune_history"]
    assert [sorted(k for k in e if k.startswith("holdout_AP50")) for e in curve] == [
        ["holdout_AP50_L2", "holdout_AP50_L4"]
    ] * 2
    frozen = _train(cache, tmp_path / "frozen", "--regime", "frozen")
    assert frozen["finetuned_blocks"] == [] and not (tmp_path / "frozen" / "blocks.safetensors").exists()
    finetune = _train(cache, tmp_path / "finetune", "--finetune-blocks", "1")
    assert finetune["training"]["regime"] == "finetune" and finetune["finetuned_blocks"] == [1, 3]  # before 2 and 4


@pytest.mark.parametrize(
    "options,message",
    [
        ({"regime": "finetune"}, "regime finetune .*needs finetune_blocks"),
        ({"regime": "joint", "finetune_blocks": 2}, "regime joint .*leave out finetune_blocks"),
        ({"regime": "both"}, "regime"),
        ({"regime": "frozen", "self_distill_epochs": 1}, "self_distill_epochs .*needs regime joint"),
    ],
)
def test_inconsistent_regimes_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ExitTraining(**options)


def test_joint_weights_early_exits_less():
    assert depth_weights((3, 6, 9, 12), 12) == {3: 0.25, 6: 0.5, 9: 0.75, 12: 1.0}


def test_the_kept_epoch_is_the_best_by_the_selection_not_the_lowest_loss():
    """A toy where the holdout loss falls every epoch while AP50 peaks at epoch 2: selection by AP50 keeps
    epoch 2's weights, by loss the last epoch's."""
    ap50 = [0.2, 0.6, 0.4, 0.3]
    for select_by, kept_epoch in (("AP50", 2), ("loss", 4)):
        module = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(module.weight)
        snapshots, calls = [], []

        def holdout(m, select_by=select_by, snapshots=snapshots, calls=calls):
            snapshots.append(m.weight.detach().clone())
            record = {"holdout": 10.0 - len(calls), "holdout_AP50_L1": ap50[len(calls)]}
            calls.append(1)
            return record | ({"select": -record["holdout_AP50_L1"]} if select_by == "AP50" else {})

        history = fit(
            module,
            lambda epoch: [torch.ones(1, 1)],
            lambda m, x: {"loss": (m(x) - 5).pow(2).sum()},
            holdout,
            epochs=4,
            lr=0.1,
            patience=10,
            progress=False,
        )
        assert [e["holdout_AP50_L1"] for e in history] == ap50
        assert torch.equal(module.weight, snapshots[kept_epoch - 1]), select_by


def _folder(regime: str, curves: dict[str, list[float]]) -> dict:
    return {
        "exits_dir": "/s/designs/det-joint",
        "head": "det",
        "finetuned_blocks": [0, 1, 2, 3],
        "regime": regime,
        "layers": [2, 4],
        "learning_curves": curves,
        "training": {"cache": "/s/cache.h5", "regime": regime},
    }


def test_the_budget_line_tells_not_viable_from_not_trained_enough():
    from probe_kit.decision.budget import budget_line

    rising = _folder("joint", {"2": [0.10, 0.15, 0.18, 0.24], "4": [0.8, 0.8, 0.8, 0.8]})
    line = budget_line([rising], "not viable")
    assert line.startswith("not viable at this budget, but det heads, joint (blocks 1-4 fine-tuned) exit 2 is still")
    assert "0.150 at epoch 2 -> 0.240 at epoch 4 (+0.090 per doubling of epochs)" in line
    assert line.endswith(
        "probe-kit train-exits --cache /s/cache.h5 --layers 2,4 --head det --regime joint --finetune-epochs 8 "
        "--device cuda --out /s/designs/det-joint-longer"
    )
    flat = _folder("joint", {"2": [0.10, 0.15, 0.155, 0.158], "4": [0.2, 0.9, 0.9, 0.9]})  # the final layer: ignored
    line = budget_line([flat], "not viable")
    assert line.startswith("not viable at this budget, and the curves are flat: the steepest") and "+0.008" in line
    assert line.endswith("more training is unlikely to help")
    assert budget_line([_folder("frozen", {})], "not viable") is None  # nothing trained live: nothing to judge
    assert budget_line([_folder("joint", {"2": [0.3]})], "not viable") is None  # one epoch: no curve


def test_a_joint_designs_last_layer_is_reported_as_a_new_full_model_beside_the_original():
    from probe_kit.decision.design import recommend_design

    def row(exits_dir: str, layer: int, ap50: float, tuned: list[int]) -> dict:
        return {
            "exits_dir": exits_dir, "head": "det", "finetuned_blocks": tuned, "policy": "static", "threshold": None,
            "layer": layer, "AP50": ap50, "mean_gflops": layer / 4, "flops_speedup": 4 / layer, "bound": False,
            "regime": "joint" if tuned else "frozen",
        }  # fmt: skip

    joint = _folder("joint", {"2": [0.1, 0.2], "4": [0.7, 0.75]})
    result = {
        "scored_image_ids": [1],
        "full_model": {"AP50": 0.80, "gflops": 1.0, "latency": {"median_ms": 10.0, "iqr_ms": 0.1}},
        "max_ap50_loss": 0.01,
        "designs": [row("/s/exits", 2, 0.1, []), row("/s/exits", 4, 0.8, []), row(joint["exits_dir"], 4, 0.75, [1])],
        "folders": [{**joint, "last_layer_AP50": 0.75}, {**_folder("frozen", {}), "exits_dir": "/s/exits"}],
    }
    lines = [line for line in recommend_design(result)["rationale"] if "new model" in line]
    assert lines == [
        "det heads, joint training (block 2 fine-tuned) trains the blocks, so its last layer is a new model: "
        "AP50 0.750 against the original model's 0.800 (-0.050); every AP50 loss here is against the original"
    ]


def test_self_distillation_trains_the_early_heads_only_towards_the_joint_backbones_own_final_layer(cache, tmp_path):
    joint = _train(cache, tmp_path / "joint", "--regime", "joint")
    distilled = _train(cache, tmp_path / "distilled", "--regime", "joint", "--self-distill-epochs", "2")
    assert joint["finetune_history"] == distilled["finetune_history"]  # the same joint stage, from the same seed
    assert [e["epoch"] for e in distilled["self_distill_history"]] == [1, 2] and not joint["self_distill_history"]
    blocks = [load_file(tmp_path / name / "blocks.safetensors") for name in ("joint", "distilled")]
    assert all(torch.equal(blocks[0][k], blocks[1][k]) for k in blocks[0])  # the backbone stays as jointly trained
    heads = [load_file(tmp_path / name / "heads.safetensors") for name in ("joint", "distilled")]
    final = [k for k in heads[0] if k.startswith("heads.4.")]
    early = [k for k in heads[0] if k.startswith("heads.2.")]
    assert final and all(torch.equal(heads[0][k], heads[1][k]) for k in final)  # the teacher never moves
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in early)
    history = distilled["self_distill_history"]
    assert all(e["holdout_AP50_L4"] == history[0]["holdout_AP50_L4"] for e in history)
