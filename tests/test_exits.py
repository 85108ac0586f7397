"""Multi-exit heads and adaptive inference on a tiny model."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import write_tiny_cache

from probe_kit.cli.main import cli
from probe_kit.heads.det import DetExitHeads
from probe_kit.heads.multi_exit import MultiExitYolos, Policy
from probe_kit.heads.policies import confidence_rule, patience_rule
from probe_kit.heads.store import load_exits
from probe_kit.models.loading import ModelSpec, load_yolos
from probe_kit.models.predict import person_scores


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_yolos(ModelSpec(str(tiny_model)))[0]


def _pixels(n=3, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_untrained_last_exit_is_the_model(model):
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (2, 4)), 0)
    pixels = _pixels()
    with torch.no_grad():
        ref = model(pixel_values=pixels)
    out = multi(pixels, Policy.fixed(4))
    torch.testing.assert_close(out.person, person_scores(ref.logits, 0))
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes)
    assert out.exit_layer.tolist() == [4, 4, 4]


def test_intermediate_exit_reads_the_raw_block_output(model):
    heads = DetExitHeads.from_model(model, (2, 4))
    multi = MultiExitYolos(model, heads, 0)
    pixels = _pixels()
    with torch.no_grad():
        states = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        expected = heads(2, states[2][:, -model.config.num_detection_tokens :])
    out = multi(pixels, Policy.fixed(2))
    torch.testing.assert_close(out.person, person_scores(expected[0], 0))
    torch.testing.assert_close(out.pred_boxes, expected[1])


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_an_exit_at_layer_k_runs_exactly_k_blocks(model, layer):
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (1, 2, 3, 4)), 0)
    calls = []
    handles = [
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
        for i, block in enumerate(model.vit.encoder.layer)
    ]
    try:
        multi(_pixels(1), Policy.fixed(layer))
    finally:
        for h in handles:
            h.remove()
    assert calls == list(range(layer))


@pytest.mark.parametrize("policy", [Policy.online(confidence_rule, 0.52), Policy.online(patience_rule, 0.5)])
def test_batched_equals_one_by_one(model, policy):
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (1, 2, 3, 4)), 0)
    # perturb the early heads so different images exit at different layers
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in (1, 2):
            for p in multi.heads.heads[str(layer)].classifier.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    pixels = _pixels(6, seed=1)
    batched = multi(pixels, policy)
    for i in range(6):
        single = multi(pixels[i : i + 1], policy)
        assert single.exit_layer.item() == batched.exit_layer[i].item()
        torch.testing.assert_close(single.person[0], batched.person[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.pred_boxes[0], batched.pred_boxes[i], atol=1e-5, rtol=1e-5)
    assert len(set(batched.exit_layer.tolist())) >= 1


def test_fixed_exit_without_a_head_is_refused(model):
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (2, 4)), 0)
    with pytest.raises(ValueError, match="layer 3 has no exit head"):
        multi(_pixels(1), Policy.fixed(3))


def test_batch_members_leave_and_the_rest_continue(model):
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (2, 4)), 0)
    calls = []
    handle = model.vit.encoder.layer[2].register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
    try:
        multi(_pixels(4), Policy.online(confidence_rule, 0.0))  # everything confident: all leave at 2
        multi(_pixels(4), Policy.online(confidence_rule, 1.01))  # nothing confident: all run on
    finally:
        handle.remove()
    assert calls == [4]


@pytest.fixture(scope="module")
def det_cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("exits") / "c.h5", dtype="float32")


def test_train_save_load_and_evaluate(det_cache, synth_dir, tmp_path):
    cache = det_cache
    runner = CliRunner()
    trained = runner.invoke(
        cli, ["train-exits", "--cache", str(cache), "--layers", "2", "--out", str(tmp_path / "exits"), "--epochs", "2"]
    )
    assert trained.exit_code == 0, trained.output
    model, _, heads, config = load_exits(tmp_path / "exits")
    assert heads.layers == (2, 4) and config.base_model["fingerprint"]
    assert {"set_loss_ce", "set_loss_bbox", "distill_loss_kl"} <= set(config.history["2"][0])
    evaluated = runner.invoke(
        cli,
        [
            "evaluate-exits",
            "--exits",
            str(tmp_path / "exits"),
            "--data",
            f"synth:{synth_dir}",
            "--out",
            str(tmp_path / "eval"),
            "--thresholds",
            "0.6,0.9",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((tmp_path / "eval/result.json").read_text())
    assert set(result["exits"]) == {"2", "4"}
    assert [s["threshold"] for s in result["sweep"]] == [0.6, 0.9]
    point = result["operating_point"]
    assert {"measured_speedup", "flops_speedup", "threshold"} <= set(point)
    assert result["exits"]["2"]["mean_gflops"] < result["exits"]["4"]["mean_gflops"]
    assert result["exits"]["4"]["mean_gflops"] == pytest.approx(result["full_model"]["gflops"])
    scored = result["scored_image_ids"]  # held out by default: images that trained nothing
    assert not set(scored) & config.trained_ids
    assert (
        sum(sum(v.values()) for v in result["exit_distribution"].values())
        == len(scored)
        == 12 - result["dropped_training_images"]
    )


def test_finetuning_the_blocks_before_each_exit(tiny_model, det_cache, tmp_path):
    cache = det_cache
    from probe_kit.heads.finetune import blocks_before_exits

    assert blocks_before_exits((2, 4), 1) == [1, 3]
    assert blocks_before_exits((1, 3), 2) == [0, 1, 2]
    result = CliRunner().invoke(
        cli,
        [
            "train-exits",
            "--cache",
            str(cache),
            "--layers",
            "2",
            "--out",
            str(tmp_path / "ft"),
            "--epochs",
            "1",
            "--finetune-blocks",
            "1",
            "--finetune-epochs",
            "2",
            "--finetune-lr",
            "1e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    base, _ = load_yolos(ModelSpec(str(tiny_model)))
    tuned, _, heads, config = load_exits(tmp_path / "ft")
    assert config.finetuned_blocks == (1, 3) and len(config.finetune_history) >= 1
    assert {"L2", "L4"} <= set(config.finetune_history[0])
    changed = [
        i
        for i in range(4)
        if not torch.equal(
            base.vit.encoder.layer[i].output.dense.weight, tuned.vit.encoder.layer[i].output.dense.weight
        )
    ]
    assert changed == [1, 3]  # only the blocks before each exit moved
    torch.testing.assert_close(base.vit.embeddings.detection_tokens, tuned.vit.embeddings.detection_tokens)
