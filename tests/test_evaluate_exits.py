"""evaluate-exits: held out by default, one recorded pass equals running every setting live, latency with spread."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_yolos, write_tiny_cache

from probe_kit.cli.main import cli
from probe_kit.data.spec import parse_data_spec
from probe_kit.heads.det import DetExitHeads
from probe_kit.heads.multi_exit import MultiExitYolos, Policy
from probe_kit.heads.policies import confidence_rule, online_policy, patience_rule, static_exit
from probe_kit.heads.records import ExitStats, record_exits
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.metrics.per_image import PerImageChoice
from probe_kit.models.loading import ModelSpec, load_yolos
from probe_kit.models.predict import detections_from_scores
from probe_kit.models.timing import Latency, describe_speedup, interleaved_latency, speedup


def _four_exits(tiny_model, scale: float) -> MultiExitYolos:
    """Exits at 1..4, heads copied from the model's; the early ones perturbed by ``scale * layer``."""
    model, _ = load_yolos(ModelSpec(str(tiny_model)))
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (1, 2, 3, 4)), 0).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in (1, 2, 3):
            for p in multi.heads.heads[str(layer)].parameters():
                p.add_(torch.randn_like(p) * scale * layer)
    return multi


@pytest.fixture(scope="module")
def samples(synth_dir):
    return parse_data_spec(f"synth:{synth_dir}").load()


@pytest.fixture(scope="module")
def processor(tiny_model):
    return load_yolos(ModelSpec(str(tiny_model)))[1]


# perturbations under which images of the synthetic scenes leave at different exits
@pytest.mark.parametrize(
    ("kind", "scale", "thresholds"), [("confidence", 0.1, (0.5, 0.6, 0.7, 0.8)), ("patience", 0.0, (0.0, 0.5, 0.95))]
)
def test_recorded_sweep_equals_running_each_setting_live(tiny_model, processor, samples, kind, scale, thresholds):
    multi = _four_exits(tiny_model, scale)
    records = record_exits(multi, processor, samples, progress=False, batch_size=1)  # bit for bit like a live run
    gt = ground_truth_dict(samples)
    chooser = PerImageChoice(gt, {k: records.detections(static_exit(records, k)) for k in records.layers})
    seen = set()
    for t in thresholds:
        rule = {"confidence": confidence_rule, "patience": patience_rule}[kind]
        layers = online_policy(rule)(records, t)
        live_layers, live_detections = [], []
        for sample in samples:  # brute force: the model run live with this policy, image by image
            pixels = processor(images=[sample.load_image()], return_tensors="pt")["pixel_values"]
            out = multi(pixels, Policy.online(rule, t))
            live_layers.append(int(out.exit_layer[0]))
            live_detections += detections_from_scores(
                out.person, out.pred_boxes, [sample.image_id], [(sample.width, sample.height)]
            )
        assert layers.tolist() == live_layers
        assert records.detections(layers) == live_detections
        reference = evaluate(gt, live_detections)  # the former implementation: pycocotools on the live detections
        mixed = chooser.score(dict(zip(records.image_ids, live_layers)))
        assert mixed == {k: v for k, v in reference.items() if k not in ("num_images", "num_gt", "num_detections")}
        seen |= set(live_layers)
    assert len(seen) >= 2  # the sweep really mixed exits


def test_recording_streams_images_a_batch_at_a_time(tiny_model, processor, samples):
    multi = _four_exits(tiny_model, 0.0)
    events = []
    streamed = [
        dataclasses.replace(s, _loader=lambda load=s.load_image: events.append("load") or load()) for s in samples[:5]
    ]
    handle = multi.model.vit.encoder.layer[0].register_forward_hook(lambda *a: events.append("forward"))
    try:
        record_exits(multi, processor, streamed, progress=False, batch_size=2)
    finally:
        handle.remove()
    assert events == ["load", "load", "forward"] * 2 + ["load", "forward"]


def test_batched_recording_equals_batch_one_to_float_rounding(tiny_model, processor, samples):
    multi = _four_exits(tiny_model, 0.1)
    one = record_exits(multi, processor, samples, progress=False, batch_size=1)
    batched = record_exits(multi, processor, samples, progress=False, batch_size=4)
    assert batched.image_ids == one.image_ids and batched.layers == one.layers
    for layer in one.layers:
        for field in ("person", "top", "boxes", "pooled"):
            torch.testing.assert_close(
                getattr(batched.stats[layer], field), getattr(one.stats[layer], field), atol=1e-5, rtol=1e-5
            )


def _stats(person: list[list[float]]) -> ExitStats:
    p = torch.tensor(person)
    return ExitStats(p, p, torch.zeros(*p.shape, 4), torch.zeros(p.shape[0], 2))


def test_confidence_leaves_when_no_token_is_undecided():
    history = [_stats([[0.01] * 99 + [0.97], [0.01] * 99 + [0.5], [0.02] * 100])]
    assert confidence_rule(history, 0.9).tolist() == [True, False, True]
    assert confidence_rule(history, 0.99).tolist() == [False, False, False]  # 0.01 < p < 0.99 is undecided
    assert confidence_rule(history, 0.5).tolist() == [True, True, True]


def test_confidence_fires_on_a_100_token_model(tmp_path):
    labels = {i: f"class{i}" for i in range(91)} | {1: "person"}
    folder = make_tiny_yolos(tmp_path / "m100", det_tokens=100, labels=labels)
    model, _ = load_yolos(ModelSpec(str(folder)))
    multi = MultiExitYolos(model, DetExitHeads.from_model(model, (1, 2, 3, 4)), 1).eval()
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fired = {t: multi(pixels, Policy.online(confidence_rule, t)).exit_layer.tolist() for t in (0.6, 0.9, 0.98, 0.999)}
    assert fired[0.6] == fired[0.9] == [1, 1, 1, 1]  # leaves at the first exit
    assert fired[0.999] == [4, 4, 4, 4]  # a person probability of ~1/92 is undecided at 0.999
    with torch.no_grad():
        logits, _ = multi.heads(1, model(pixel_values=pixels, output_hidden_states=True).hidden_states[1][:, -100:])
    # the former rule (every token's top class probability >= t) cannot fire at any threshold >= 0.5 here
    assert float(logits.softmax(-1).max(-1).values.min()) < 0.5


def test_speedup_spread_straddling_one_is_no_measurable_difference():
    full = Latency((10.0, 10.5, 9.5, 10.2, 9.8))
    assert speedup(full, Latency((5.0, 5.1, 4.9, 5.0, 5.2)))["measurable"]
    same = speedup(full, Latency((10.4, 9.6, 10.1, 9.9, 10.3)))
    assert not same["measurable"] and same["ratio"] == pytest.approx(10.0 / 10.1)
    assert same["round_ratio_median"] == pytest.approx(10.0 / 10.4)  # the middle of 0.94, 0.95, 0.96, 1.03, 1.09
    assert describe_speedup(same).startswith("no measurable difference")
    assert Latency((1.0, 2.0, 3.0, 4.0, 5.0)).to_json() == {"median_ms": 3.0, "iqr_ms": 2.0, "repeats": 5}


def test_interleaved_latency_runs_each_setting_warmup_plus_repeats_times_in_seeded_shuffled_rounds():
    import time

    calls, threads = [], []

    def setting(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            threads.append(torch.get_num_threads())
            time.sleep(seconds)

        return run

    before = torch.get_num_threads()
    settings = {n: setting(n, s) for n, s in (("slow", 0.02), ("fast", 0.005), ("mid", 0.01))}
    run = interleaved_latency(settings, images=2, rounds=4, warmup=1, threads=1, baseline="slow")
    assert calls[:3] == ["slow", "fast", "mid"]  # 1 warm-up round, in order
    rounds = [calls[3 + 3 * r : 6 + 3 * r] for r in range(4)]
    assert all(sorted(r) == ["fast", "mid", "slow"] for r in rounds) and len(calls) == 15  # each once per round
    assert len({tuple(r) for r in rounds}) > 1  # shuffled, not one fixed order
    order = list(calls)
    calls.clear()
    interleaved_latency(settings, images=2, rounds=4, warmup=1, threads=1, baseline="slow")
    assert calls == order  # the same seed, the same order
    assert set(threads) == {1} and torch.get_num_threads() == before
    latency = run.latency
    assert latency["slow"].to_json()["repeats"] == latency["fast"].to_json()["repeats"] == run.rounds == 4
    assert latency["slow"].median_ms >= 10.0 and latency["fast"].median_ms >= 2.5  # per image: sleep / 2 images
    assert latency["slow"].median_ms > latency["fast"].median_ms
    assert run.stopped.startswith(("intervals narrow", "round cap")) and run.conditions["threads"] == 1
    assert {"cpu", "cores", "load_before", "load_after"} <= set(run.conditions)


def test_rounds_go_on_while_intervals_are_wide_up_to_the_cap():
    import random

    noise = random.Random(0)

    def jitter(scale: float):
        return lambda: time.sleep(scale * (0.5 + noise.random()))

    import time

    from probe_kit.models.timing import Rounds

    run = interleaved_latency(
        {"full": jitter(0.004), "x": jitter(0.002)}, images=1, rounds=Rounds(3, 12, 30.0, 0.01, 0), warmup=0
    )
    assert run.rounds == 12 and run.stopped.startswith("round cap")  # a 1% interval is out of reach: the cap stops it
    calm = interleaved_latency({"full": jitter(0.0), "x": jitter(0.0)}, images=1, rounds=Rounds(3, 12, 0.0, 5.0, 0))
    assert calm.rounds == 3 and calm.stopped.startswith("intervals narrow")


@pytest.fixture(scope="module")
def exits_dir(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate_exits")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5", dtype="float32")
    args = ["train-exits", "--cache", str(cache), "--layers", "2", "--out", str(folder / "exits"), "--epochs", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return folder / "exits"


def _evaluate(exits_dir, synth_dir, out):
    args = ["evaluate-exits", "--exits", str(exits_dir), "--data", f"synth:{synth_dir}", "--out", str(out)]
    return CliRunner().invoke(cli, [*args, "--thresholds", "0.6,0.9", "--timing-images", "2", "--timing-repeats", "3"])


def test_held_out_by_default_with_rescorable_detections(exits_dir, synth_dir, tmp_path):
    run = _evaluate(exits_dir, synth_dir, tmp_path / "eval")
    assert run.exit_code == 0, run.output
    config = json.loads((exits_dir / "config.json").read_text())
    result = json.loads((tmp_path / "eval/result.json").read_text())
    trained = set(config["train_image_ids"]) | set(config["holdout_image_ids"])
    samples = parse_data_spec(f"synth:{synth_dir}").load()
    assert result["scored_image_ids"] == [s.image_id for s in samples if s.image_id not in trained]
    assert result["dropped_training_images"] == len(trained) > 0
    assert f"{len(trained)} training images dropped" in run.output
    for where in (result["full_model"], result["operating_point"], *result["exits"].values()):
        assert set(where["latency"]) == {"median_ms", "iqr_ms", "repeats"}
        assert where["latency"]["repeats"] == result["timing"]["rounds"] >= 3  # at least --timing-repeats
    assert result["timing"]["threads"] == 1 and len(result["timing"]["timed_image_ids"]) == 2
    # detections re-score to the reported numbers with pycocotools
    gt = ground_truth_dict([s for s in samples if s.image_id not in trained])
    full = json.loads((tmp_path / "eval/detections/full.json").read_text())
    assert evaluate(gt, full)["AP"] == result["full_model"]["AP"]
    exit2 = json.loads((tmp_path / "eval/detections/exit-2.json").read_text())
    assert evaluate(gt, exit2)["AP50"] == result["exits"]["2"]["AP50"]
    assert {"image_id", "category_id", "bbox", "score"} == set(exit2[0])


def test_only_training_images_is_refused_in_one_line(exits_dir, synth_dir, tmp_path):
    config = json.loads((exits_dir / "config.json").read_text())
    train_seq = config["split"]["train_groups"][0]
    args = ["evaluate-exits", "--exits", str(exits_dir), "--data", f"synth:{synth_dir}", "--sequences", train_seq]
    run = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "eval")])
    assert run.exit_code == 1 and "Traceback" not in run.output
    assert "trained or early-stopped" in run.output and "--sequences" in run.output
    assert len(run.output.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_folder_without_training_ids_is_refused(exits_dir, synth_dir, tmp_path):
    old = tmp_path / "old_exits"
    old.mkdir()
    for f in exits_dir.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    config = json.loads((old / "config.json").read_text())
    del config["train_image_ids"]
    (old / "config.json").write_text(json.dumps(config))
    run = _evaluate(old, synth_dir, tmp_path / "eval")
    assert run.exit_code != 0 and "retrain" in run.output
    assert not (tmp_path / "eval").exists()


def test_replay_leaves_at_its_layer_after_running_every_head_on_the_way(tiny_model):
    multi = _four_exits(tiny_model, 0.1)
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    called = []
    handles = [multi.heads.heads[str(k)].register_forward_hook(lambda *a, k=k: called.append(k)) for k in (1, 2, 3, 4)]
    try:
        replay = multi(pixels, Policy.replay(3))
        called_replay, called[:] = list(called), []
        fixed = multi(pixels, Policy.fixed(3))
    finally:
        for h in handles:
            h.remove()
    assert called_replay == [1, 2, 3] and called == [3]
    assert replay.exit_layer.tolist() == fixed.exit_layer.tolist() == [3]
    torch.testing.assert_close(replay.person, fixed.person)
    torch.testing.assert_close(replay.pred_boxes, fixed.pred_boxes)


@pytest.mark.parametrize("ids", [None, "x", ["a"], [], [True]])
def test_damaged_training_ids_are_refused_naming_the_field(exits_dir, synth_dir, tmp_path, ids):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(exits_dir, damaged)
    config = json.loads((damaged / "config.json").read_text())
    config["train_image_ids"] = ids
    (damaged / "config.json").write_text(json.dumps(config))
    args = ["evaluate-exits", "--exits", str(damaged), "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1 and "config.json: train_image_ids: expected a non-empty list" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_same_exits_folder_twice_is_refused(exits_dir, synth_dir, tmp_path):
    args = ["evaluate-exits", "--exits", str(exits_dir), "--exits", str(exits_dir), "--policies", "confidence"]
    result = CliRunner().invoke(cli, [*args, "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "given twice" in result.stderr and not (tmp_path / "o").exists()
