"""torchrun on CPUs (Gloo, 2 processes): sharded caches equal single-process ones, resume per shard, merge,
distributed evaluation equal to a single-process run.

Each torchrun start costs seconds (two Python processes importing torch and transformers), so every
launch runs once per module and several tests read its outputs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_results, write_tiny_cache

from probe_kit.cache import writer as writer_module
from probe_kit.cache.compare import compare_caches, float_tolerance
from probe_kit.cache.reader import FeatureCache
from probe_kit.cache.shards import shard_path
from probe_kit.cli.main import cli
from probe_kit.distributed import on_rank_zero, shard_bounds

TOKENS = ("det", "patch", "cls")
BATCH = 2  # 12 synthetic images -> 6 batches -> 3 per rank, so a rank can be killed between batches


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m probe_kit ARGS``; fails the test with its stderr."""
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        command + ["-m", "probe_kit", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"torchrun {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def assert_same_cache(ours: Path, reference: Path) -> None:
    """The contract of docs/cache-format.md ("Equivalent caches"): exact data, computed floats within tolerance."""
    assert compare_caches(ours, reference) == []


@pytest.fixture(scope="module")
def runs(tiny_model, synth_dir, tmp_path_factory):
    """A single-process cache, and a 2-process torchrun cache whose rank 1 had been killed after one batch."""
    folder = tmp_path_factory.mktemp("dist")
    single = write_tiny_cache(tiny_model, synth_dir, folder / "single.h5", tokens=TOKENS, batch_size=BATCH)
    out = folder / "sharded" / "cache.h5"
    calls = {"n": 0}
    real_write = writer_module._write_batch

    def killed_after_one_batch(*args, **kwargs):
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real_write(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer_module, "_write_batch", killed_after_one_batch)
        with pytest.raises(KeyboardInterrupt):
            write_tiny_cache(
                tiny_model, synth_dir, shard_path(out, 1, 2), tokens=TOKENS, batch_size=BATCH, shard=(1, 2)
            )
    with h5py.File(shard_path(out, 1, 2), "r") as handle:
        killed = {"created": handle.attrs["created"], "num_written": int(handle.attrs["num_written"])}
    spec = ["--model", str(tiny_model), "--data", f"synth:{synth_dir}", "--batch-size", str(BATCH)]
    done = torchrun("cache", *spec, "--tokens", ",".join(TOKENS), "--out", str(out), cwd=folder)
    return {"single": single, "sharded": out, "killed": killed, "stdout": done.stdout, "folder": folder}


def test_shard_bounds_tile_in_whole_batches():
    for n in range(40):
        for count in range(1, 5):
            for align in (1, 3, 8):
                cuts = [shard_bounds(n, i, count, align) for i in range(count)]
                assert cuts[0][0] == 0 and cuts[-1][1] == n
                assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))
                assert all(lo % align == 0 or lo == n for lo, _ in cuts)
                blocks = [-(-(hi - lo) // align) for lo, hi in cuts]
                assert max(blocks) - min(blocks) <= 1


def test_sharded_cache_equals_the_single_process_cache(runs):
    assert_same_cache(runs["sharded"], runs["single"])
    assert runs["stdout"].count("cache complete") == 1  # rank 0 alone reports
    with h5py.File(runs["sharded"], "r") as handle:
        assert handle["layers/2/patch"].is_virtual and handle["final/logits"].is_virtual
        assert json.loads(handle.attrs["shards"]) == [shard_path(runs["sharded"], i, 2).name for i in range(2)]
    with FeatureCache(runs["sharded"]) as sharded, FeatureCache(runs["single"]) as single:
        index = np.array([9, 0, 5])  # across both shards, out of order
        got, want = sharded.read(3, "det", index), single.read(3, "det", index)
        scale = float(np.abs(single.read(3, "det")).max())
        assert (np.abs(got.astype(np.float64) - want) <= float_tolerance(want, got, scale)).all()
        assert [s.image_id for s in sharded.samples()] == [s.image_id for s in single.samples()]
        assert sharded.fingerprint == single.fingerprint


def perturbed_copy(cache: Path, folder: Path, name: str, change) -> tuple[Path, tuple[int, ...]]:
    """A copy of ``cache`` with one element of dataset ``name`` changed by ``change(value)``; returns its index."""
    copy = folder / f"{name.replace('/', '_')}.h5"
    shutil.copy(cache, copy)
    with h5py.File(copy, "r+") as handle:
        values = handle[name][()]
        small = np.abs(values) < 0.9 if values.dtype.kind == "f" else np.ones(values.shape, bool)
        index = tuple(int(i) for i in np.argwhere(small)[len(values) // 2])  # mid-cache; floats with |v| < 1
        values[index] = change(values[index])
        handle[name][()] = values
    return copy, index


@pytest.mark.parametrize("name", ["final/logits", "layers/3/det", "layers/2/patch"])
def test_one_value_changed_by_1e_3_breaks_the_contract_and_is_named(runs, tmp_path, name):
    """The tolerance is not looser than needed: 1e-3 on one value of a float32 or float16 dataset fails."""
    copy, index = perturbed_copy(runs["single"], tmp_path, name, lambda v: v + v.dtype.type(1e-3))
    problems = compare_caches(copy, runs["single"])
    where = ", ".join(map(str, index))
    assert len(problems) == 1 and problems[0].startswith(f"{name}[{where}]:"), problems
    result = CliRunner().invoke(cli, ["cache", "compare", str(copy), str(runs["single"])])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"{name}[{where}]" in result.output and "Traceback" not in result.output


def test_one_half_precision_step_is_within_the_contract_and_other_data_is_exact(runs, tmp_path):
    """A float16 feature one step away (float32 values on either side of a rounding boundary) is equivalent;
    the same step in the ground truth or an image id is not: data read from files is promised exactly."""
    step, _ = perturbed_copy(runs["single"], tmp_path, "layers/3/det", lambda v: np.nextafter(v, np.float16(9)))
    assert compare_caches(step, runs["single"]) == []
    result = CliRunner().invoke(cli, ["cache", "compare", str(step), str(runs["single"])])
    assert result.exit_code == 0 and result.output.startswith("equivalent:"), result.output
    ids, _ = perturbed_copy(runs["single"], tmp_path, "images/image_id", lambda v: v + 1)
    assert compare_caches(ids, runs["single"])[0].startswith("images/image_id[")
    sizes, _ = perturbed_copy(runs["single"], tmp_path, "images/orig_size", lambda v: v + 1)
    assert compare_caches(sizes, runs["single"])[0].startswith("images/orig_size[")


def test_killed_rank_resumed_its_shard_and_finished_shards_are_not_redone(runs, tiny_model, synth_dir, monkeypatch):
    assert runs["killed"]["num_written"] == BATCH  # the kill came after one batch of rank 1's three
    with h5py.File(shard_path(runs["sharded"], 1, 2), "r") as handle:
        assert handle.attrs["created"] == runs["killed"]["created"]  # resumed, not rebuilt
        assert handle.attrs["complete"] and json.loads(handle.attrs["shard"])["start"] == 6

    def no_work(*args, **kwargs):
        raise AssertionError("a complete shard was extracted again")

    monkeypatch.setattr(writer_module, "_write_batch", no_work)
    for index in range(2):
        path = shard_path(runs["sharded"], index, 2)
        write_tiny_cache(tiny_model, synth_dir, path, tokens=TOKENS, batch_size=BATCH, shard=(index, 2))


def test_merge_copies_a_sharded_cache_into_one_file_and_the_folder_can_move(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["sharded"].parent, moved)  # relative shard paths: the joined file follows its folder
    runner = CliRunner()
    info = runner.invoke(cli, ["cache", "info", str(moved / "cache.h5")])
    assert info.exit_code == 0, info.output
    assert f"shards:       2 in {moved.resolve()}" in info.output
    merged = tmp_path / "merged.h5"
    result = runner.invoke(cli, ["cache", "merge", str(moved / "cache.h5"), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert_same_cache(merged, runs["single"])
    with h5py.File(merged, "r") as handle:
        assert "shards" not in handle.attrs
        virtual = []
        handle.visititems(lambda name, obj: virtual.append(name) if getattr(obj, "is_virtual", False) else None)
        assert virtual == []
    for index in range(2):  # the merged file needs no shard; the joined one refuses to read zeros
        shard_path(moved / "cache.h5", index, 2).unlink()
    with FeatureCache(merged) as cache:
        assert cache.read(4, "patch").shape == (12, 16, 32)
    with pytest.raises(ValueError, match="cache-shard-00000-of-00002.h5 is missing"):
        FeatureCache(moved / "cache.h5")
    again = runner.invoke(cli, ["cache", "merge", str(runs["single"]), "--out", str(tmp_path / "x.h5")])
    assert again.exit_code == 1 and "not a sharded cache" in again.output
    assert not (tmp_path / "x.h5").exists()


def test_joining_removes_the_shards_of_a_run_with_another_process_count(runs, tmp_path):
    from probe_kit.cache.shards import join_shards

    folder = tmp_path / "rerun"
    shutil.copytree(runs["sharded"].parent, folder)
    out = folder / "cache.h5"
    stale = [shard_path(out, i, 3) for i in range(3)]  # as left by an earlier run with 3 processes
    for path in stale:
        shutil.copy(shard_path(out, 0, 2), path)
    (folder / "cache-shard-notes.txt").write_text("not a shard")
    join_shards([shard_path(out, i, 2) for i in range(2)], out)
    assert not any(path.exists() for path in stale)
    assert (folder / "cache-shard-notes.txt").exists()
    assert_same_cache(out, runs["single"])


def test_on_rank_zero_without_torchrun_just_runs():
    assert on_rank_zero(lambda: 41 + 1) == 42


@pytest.fixture(scope="module")
def evaluated(synth_dir, tmp_path_factory):
    """``probe-kit evaluate`` of the shipped reference model (AP ~0.4 here, so ranks matter) by 2 torchrun
    processes, 6 images each in batches of 2."""
    folder = tmp_path_factory.mktemp("dist-eval")
    spec = ["--model", "reference", "--data", f"synth:{synth_dir}", "--batch-size", str(BATCH)]
    done = torchrun("evaluate", *spec, "--out", str(folder / "metrics.json"), cwd=folder)
    return folder, done.stdout


def test_distributed_evaluate_scores_like_one_process(evaluated, synth_dir):
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.metrics.coco import evaluate, ground_truth_dict
    from probe_kit.models.evaluate import evaluate_model
    from probe_kit.models.loading import ModelSpec

    folder, stdout = evaluated
    data = parse_data_spec(f"synth:{synth_dir}")
    metrics, detections = evaluate_model(ModelSpec("reference"), data, BATCH, progress=False)
    assert metrics["AP50"] > 0.3  # a model that finds the persons, so a reordered or lost detection would show
    got = json.loads((folder / "metrics.json").read_text())
    gathered = json.loads((folder / "metrics_detections.json").read_text())
    assert stdout.count("AP ") == 1  # rank 0 alone reports
    assert len(gathered) == len(detections) == 12 * 10  # every det token of every image
    assert [d["image_id"] for d in gathered] == [d["image_id"] for d in detections]
    np.testing.assert_allclose([d["score"] for d in gathered], [d["score"] for d in detections], atol=1e-6)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert got[key] == pytest.approx(metrics[key], abs=1e-9), key
    # and the gathered list itself, re-scored independently by pycocotools, gives the reported numbers
    rescored = evaluate(ground_truth_dict(data.load()), gathered)
    assert got["AP"] == pytest.approx(rescored["AP"], abs=1e-12)


FINETUNE = [
    "--layers",
    "2",
    "--epochs",
    "1",
    "--finetune-blocks",
    "1",
    "--finetune-epochs",
    "2",
    "--finetune-lr",
    "1e-3",
]


@pytest.mark.parametrize("head,regime", [("det", "finetune"), ("dense", "finetune"), ("det", "joint")])
def test_ddp_finetuning_matches_one_process_with_the_same_global_batch(runs, tmp_path, head, regime):
    """2 torchrun processes, each half of every global batch, gradients all-reduced, vs one process; for every
    head type (one fine-tuning loop) and the joint regime (its holdout AP50 gathered from both ranks), and rank 0
    alone writes the folder."""
    at = FINETUNE.index("--finetune-blocks")
    live = FINETUNE if regime == "finetune" else FINETUNE[:at] + FINETUNE[at + 2 :]  # joint: every block
    cache, args = str(runs["single"]), [*live, "--head", head, "--regime", regime]
    done = torchrun("train-exits", "--cache", cache, *args, "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    one = CliRunner().invoke(cli, ["train-exits", "--cache", cache, *args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert done.stdout.count("exit heads ->") == 1  # rank 0 alone reports and saves
    assert "effective batch size" in done.stderr and "2 processes" in done.stderr
    ddp = json.loads((tmp_path / "ddp" / "config.json").read_text())
    single = json.loads((tmp_path / "one" / "config.json").read_text())
    assert ddp["finetune_processes"] == 2 and single["finetune_processes"] == 1
    assert_same_results(ddp["history"], single["history"])  # the cache-based head stage: one thread vs several
    assert len(ddp["finetune_history"]) == len(single["finetune_history"]) == 2
    for a, b in zip(ddp["finetune_history"], single["finetune_history"]):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-3), (key, a[key], b[key])


def test_ddp_reference_training_matches_one_process(tmp_path):
    """``reference train`` on a tiny recipe: 2 torchrun processes, half of each global batch each, vs one."""
    import yaml

    from probe_kit.reference.recipe import RecipeConfig, train_reference

    tiny = {
        "scene_size": 128,
        "image_size": 64,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "det_tokens": 5,
        "batch_size": 8,
        "lr": 2e-3,
        "grad_clip": 1.0,
        "warmup_steps": 2,
        "steps": 3,
        "train_frames": 16,
        "easy_frames": 8,
        "curriculum_start": 1,
        "curriculum_end": 2,
        "heldout_frames": 4,
        "eval_every": 1,
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    done = torchrun("reference", "train", "--config", "tiny.yaml", "--out", "ddp", cwd=tmp_path)
    assert done.stdout.count("best held-out AP50") == 1
    assert "effective batch size 8 images per step (2 processes" in done.stdout + done.stderr
    train_reference(RecipeConfig(**tiny), tmp_path / "one", progress=False)
    ddp, one = (
        [json.loads(line) for line in (tmp_path / run / "history.jsonl").read_text().splitlines()]
        for run in ("ddp", "one")
    )
    assert [h["step"] for h in ddp] == [h["step"] for h in one] == [1, 2, 3]
    for a, b in zip(ddp, one):
        for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_dense", "AP"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (key, a[key], b[key])


def test_distributed_evaluate_exits_scores_like_one_process(runs, synth_dir, tmp_path):
    """Held-out images recorded by 2 torchrun processes, gathered, scored and timed on rank 0, vs one process."""
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.heads.evaluate import evaluate_exits
    from probe_kit.heads.pipeline import Timing

    exits = tmp_path / "exits"
    trained = CliRunner().invoke(
        cli, ["train-exits", "--cache", str(runs["single"]), "--layers", "2", "--out", str(exits), "--epochs", "2"]
    )
    assert trained.exit_code == 0, trained.output
    timing = ["--timing-images", "2", "--timing-repeats", "3", "--thresholds", "0.6,0.9"]
    spec = ["--exits", str(exits), "--data", f"synth:{synth_dir}", *timing]
    done = torchrun("evaluate-exits", *spec, "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    assert done.stdout.count("operating point: threshold") == 1  # rank 0 alone reports
    got = json.loads((tmp_path / "ddp" / "result.json").read_text())
    one = evaluate_exits(
        exits, parse_data_spec(f"synth:{synth_dir}"), (0.6, 0.9), progress=False, timing=Timing(images=2, repeats=3)
    )
    assert got["timing"]["processes"] == 2 and one["timing"]["processes"] == 1
    assert got["scored_image_ids"] == one["scored_image_ids"] and len(one["scored_image_ids"]) >= 2
    for layer in one["exits"]:
        for key in ("AP", "AP50", "AP75", "mean_gflops"):
            assert got["exits"][layer][key] == pytest.approx(one["exits"][layer][key], abs=1e-9), (layer, key)
    for a, b in zip(got["sweep"], one["sweep"]):
        assert a["exit_histogram"] == b["exit_histogram"]
        assert a["AP"] == pytest.approx(b["AP"], abs=1e-9)
    assert got["operating_point"]["threshold"] == one["operating_point"]["threshold"]


def test_the_design_comparison_under_torchrun_runs_once_on_rank_zero(runs, synth_dir, tmp_path):
    """It times settings side by side, so rank 0 runs it whole (the others wait): one report, one process's numbers."""
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.heads.designs import compare_designs
    from probe_kit.heads.pipeline import Timing

    exits = tmp_path / "exits"
    trained = CliRunner().invoke(
        cli, ["train-exits", "--cache", str(runs["single"]), "--layers", "2", "--out", str(exits), "--epochs", "2"]
    )
    assert trained.exit_code == 0, trained.output
    spec = ["--exits", str(exits), "--data", f"synth:{synth_dir}", "--policies", "confidence,oracle"]
    timing = ["--timing-images", "1", "--timing-repeats", "3"]
    done = torchrun("evaluate-exits", *spec, *timing, "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    assert done.stdout.count("latency check:") == 1
    assert "\r" not in done.stderr  # no progress frames in a redirected log, from any rank
    got = json.loads((tmp_path / "ddp" / "result.json").read_text())
    one = compare_designs(
        [exits], parse_data_spec(f"synth:{synth_dir}"), ("confidence", "oracle"), timing=Timing(1, 3), progress=False
    )
    assert got["scored_image_ids"] == one["scored_image_ids"]
    keys = ("policy", "threshold", "AP50", "exit_histogram")
    assert_same_results(
        [{k: d[k] for k in keys} for d in got["designs"]], [{k: d[k] for k in keys} for d in one["designs"]]
    )


def test_probe_kit_run_under_torchrun_shards_the_cache_and_runs_the_rest_on_rank_zero(tiny_model, tmp_path):
    """A small study by 2 torchrun processes: same cache datasets and decision as one process, one report."""
    import yaml

    from probe_kit.experiment import load_experiment, run_experiment

    settings = {
        "name": "t",
        "synth": {"frames": 12, "seed": 4, "size": 128, "frames_per_sequence": 4},
        "model": str(tiny_model),
        "batch_size": 2,
        "analyzers": {"flops": {}, "lens": {}},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(settings))
    done = torchrun("run", "exp.yaml", "--out", "ddp", cwd=tmp_path)
    assert done.stdout.count("report.html") == 1
    one = run_experiment(load_experiment(tmp_path / "exp.yaml"), tmp_path / "one", say=lambda _: None)
    assert_same_cache(tmp_path / "ddp" / "cache.h5", tmp_path / "one" / "cache.h5")
    with h5py.File(tmp_path / "ddp" / "cache.h5", "r") as handle:
        assert len(json.loads(handle.attrs["shards"])) == 2
    assert json.loads((tmp_path / "ddp" / "results" / "decision.json").read_text())["exits"] == one["exits"]
    assert (tmp_path / "ddp" / "report.html").is_file()


def test_a_cache_based_command_under_torchrun_runs_on_rank_zero(runs, tmp_path):
    """``analyze`` does not split its work: under torchrun rank 0 runs it alone, the same as one process."""
    args = ["analyze", "probe-linear", "--cache", str(runs["single"]), "--layers", "2", "-o", "epochs=2"]
    done = torchrun(*args, "--out", str(tmp_path / "ddp"), cwd=tmp_path)
    one = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert done.stdout.count("result.json") == one.output.count("result.json") == 1
    got, want = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("ddp", "one"))
    assert_same_results(got["layers"], want["layers"])
