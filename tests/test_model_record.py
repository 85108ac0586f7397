"""The model record: caches and exits folders record what rebuilds the model exactly; one loader rebuilds it."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_yolos

from probe_kit.cache.reader import FeatureCache
from probe_kit.cache.writer import write_cache
from probe_kit.cli.main import cli
from probe_kit.data.spec import parse_data_spec
from probe_kit.heads.options import ExitTraining
from probe_kit.heads.store import load_exits, record_sha256
from probe_kit.heads.training import train_exits
from probe_kit.models.layers import resolve_layers
from probe_kit.models.loading import ModelSpec
from probe_kit.models.record import ModelRecord, build_processor, load_recorded, weights_fingerprint
from probe_kit.training.data import cache_record, load_cache_model, make_split

EDGE = 96  # the tiny checkpoint's processor resizes to 64; the cache is made at 96, as the study overrides 800 -> 512


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_yolos(tmp_path_factory.mktemp("record") / "model", seed=4)


@pytest.fixture(scope="module")
def cache_96(model_dir, synth_dir, tmp_path_factory):
    return write_cache(
        ModelSpec(str(model_dir), shortest_edge=EDGE),
        parse_data_spec(f"synth:{synth_dir}"),
        "all",
        ["det"],
        tmp_path_factory.mktemp("record_cache") / "c.h5",
        dtype="float32",
        batch_size=4,
        progress=False,
    )


@pytest.fixture(scope="module")
def exits_96(cache_96, tmp_path_factory):
    out = tmp_path_factory.mktemp("record_exits") / "exits"
    return train_exits(cache_96, (2,), out, "det", opts=ExitTraining(epochs=1), progress=False)


def _pixels(processor, cache: FeatureCache, index: int) -> torch.Tensor:
    sample = cache.data_spec().load()[index]
    return processor(images=[sample.load_image()], return_tensors="pt")["pixel_values"]


def test_the_cache_records_processor_class_config_and_shortest_edge(cache_96, model_dir):
    with FeatureCache(cache_96) as cache:
        record = cache_record(cache)
        sizes = cache.input_sizes()
    assert record.processor_class == "YolosImageProcessorPil"  # no torchvision here: the PIL backend ran
    assert record.shortest_edge == EDGE and record.dtype == "float32" and record.name == str(model_dir)
    assert {tuple(s) for s in sizes} == {(EDGE, EDGE)}  # synthetic scenes are square


def test_load_cache_model_and_load_exits_resize_to_the_cache_input_size(cache_96, exits_96):
    """Both loaders rebuild the 96 px processor (not the checkpoint's 64 px), and the rebuilt model on the
    rebuilt processor's pixels reproduces the cache's final outputs."""
    with FeatureCache(cache_96) as cache:
        model = load_cache_model(cache)
        _, processor = load_recorded(cache_record(cache))
        pixels = _pixels(processor, cache, 0)
        logits, boxes = cache.final_outputs()
        exit_model, exit_processor, _, config = load_exits(exits_96)
        exit_pixels = _pixels(exit_processor, cache, 0)
    assert tuple(pixels.shape[-2:]) == (EDGE, EDGE) and tuple(exit_pixels.shape[-2:]) == (EDGE, EDGE)
    assert config.base_model["processor"]["size"]["shortest_edge"] == EDGE
    with torch.no_grad():
        ours = model(pixel_values=pixels)
        theirs = exit_model(pixel_values=exit_pixels)
    np.testing.assert_allclose(ours.logits[0].numpy(), logits[0], atol=1e-4)
    np.testing.assert_allclose(theirs.pred_boxes[0].numpy(), boxes[0], atol=1e-4)


def test_changed_weights_are_refused_everywhere(cache_96, exits_96, model_dir, tmp_path):
    moved = tmp_path / "model"
    shutil.copytree(model_dir, moved)
    make_tiny_yolos(moved, seed=5)  # same architecture, other weights, same folder name in the record below
    with FeatureCache(cache_96) as cache:
        record = cache_record(cache)
    other = ModelRecord(**{**record.to_json(), "name": str(moved)})
    with pytest.raises(ValueError, match="now has weights .* were recorded"):
        load_recorded(other)
    copy = tmp_path / "exits"
    shutil.copytree(exits_96, copy)
    _edit(copy, lambda c: c["base_model"].update(name=str(moved)))
    with pytest.raises(ValueError, match="base_model: .* now has weights"):
        load_exits(copy)


def test_a_processor_backend_that_cannot_be_rebuilt_is_refused(cache_96):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: both backends can be rebuilt here")
    with FeatureCache(cache_96) as cache:
        record = cache_record(cache)
    fast = ModelRecord(**{**record.to_json(), "processor_class": "YolosImageProcessor"})
    with pytest.raises(ValueError, match="recorded with YolosImageProcessor but this environment builds"):
        build_processor(fast, "cache")


def test_the_rebuilt_processor_gives_the_pixels_of_the_original(model_dir, synth_dir):
    from probe_kit.models.loading import load_yolos

    model, processor = load_yolos(ModelSpec(str(model_dir), shortest_edge=EDGE))
    record = ModelRecord.of(model, processor, ModelSpec(str(model_dir), shortest_edge=EDGE))
    rebuilt = build_processor(ModelRecord.from_json(json.loads(json.dumps(record.to_json())), "here"), "here")
    image = parse_data_spec(f"synth:{synth_dir}").load()[0].load_image()
    a = processor(images=[image], return_tensors="pt")["pixel_values"]
    b = rebuilt(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.equal(a, b) and record.fingerprint == weights_fingerprint(model)


def test_exits_folder_records_the_images_that_trained_and_early_stopped(cache_96, exits_96):
    config = json.loads((exits_96 / "config.json").read_text())
    with FeatureCache(cache_96) as cache:
        samples = cache.samples()
    split = make_split(samples)
    ids = [s.image_id for s in samples]
    assert config["train_image_ids"] == [ids[i] for i in split.train]
    assert config["holdout_image_ids"] == [ids[i] for i in split.holdout]
    assert not set(config["train_image_ids"]) & set(config["split"]["val_image_ids"])
    assert not set(config["holdout_image_ids"]) & set(config["split"]["val_image_ids"])


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda d: (d / "config.json").unlink(), "not an exits folder"),
        (lambda d: (d / "heads.safetensors").unlink(), "heads.safetensors: missing"),
        (lambda d: _edit(d, lambda c: c.pop("base_model")), "no 'base_model'"),
        (lambda d: _edit(d, lambda c: c["base_model"].pop("processor_class")), r"lacks \['processor_class'\]"),
        (lambda d: _edit(d, lambda c: c.update(finetuned_blocks=[0])), "blocks.safetensors: missing"),
        (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
    ],
)
def test_broken_exits_folders_are_refused_in_one_line(exits_96, tmp_path, breakage, message):
    folder = tmp_path / "exits"
    shutil.copytree(exits_96, folder)
    breakage(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        load_exits(folder)
    assert "\n" not in str(err.value)


def _edit(folder, change) -> None:
    """Change config.json as a consistent writer would: the record's sha256 follows the record, so the checks
    behind it are reached (an edit that leaves the sha256 behind is refused first: test_no_number_...)."""
    config = json.loads((folder / "config.json").read_text())
    change(config)
    if "base_model" in config:
        config["base_model_sha256"] = record_sha256(config["base_model"])
    (folder / "config.json").write_text(json.dumps(config))


def test_heads_of_another_base_model_are_refused(exits_96, tmp_path):
    """A config.json whose record names another checkpoint (here with two labels) with heads that do not fit it."""
    from probe_kit.models.loading import load_yolos

    other = make_tiny_yolos(tmp_path / "other", seed=4, labels={0: "person", 1: "car"})
    model, processor = load_yolos(ModelSpec(str(other), shortest_edge=EDGE))
    folder = tmp_path / "exits"
    shutil.copytree(exits_96, folder)
    record = ModelRecord.of(model, processor, ModelSpec(str(other)))
    _edit(folder, lambda c: c.update(base_model=record.to_json()))
    with pytest.raises(ValueError, match="heads do not fit") as err:
        load_exits(folder)
    assert "\n" not in str(err.value)


def test_reversed_layer_range_is_refused():
    with pytest.raises(ValueError, match=r"--layers '3-1,6': range '3-1' is reversed"):
        resolve_layers("3-1,6", 12)
    assert resolve_layers("1-3,6", 12) == (1, 2, 3, 6)


def test_val_sequences_are_named_as_sequences_are(cache_96, tmp_path):
    """``02`` names SYNTH-02 for --val-sequences as for --sequences (it used to find nothing)."""
    with FeatureCache(cache_96) as cache:
        samples = cache.samples()
    by_number = make_split(samples, val_sequences=["02"])
    by_name = make_split(samples, val_sequences=["SYNTH-02"])
    assert by_number.unit == "sequence" and np.array_equal(by_number.val, by_name.val)
    assert {samples[i].file_name.split("/")[0] for i in by_number.val} == {"SYNTH-02"}
    with pytest.raises(ValueError, match="--val-sequences 77: none of them is in the cache"):
        make_split(samples, val_sequences=["77"])
    result = CliRunner().invoke(
        cli,
        ["train-exits", "--cache", str(cache_96), "--layers", "2", "--out", str(tmp_path / "e"), "--epochs", "1"]
        + ["--val-sequences", "02", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e/config.json").read_text())["split"]["val_groups"] == ["SYNTH-02"]


def test_contiguous_blocks_of_one_sequence_leave_a_gap(cache_96):
    """5 frames of one sequence, gap 0.2: validation = the last 30% (frame 4) after a gap of one frame (3);
    early stopping = the last 20% of the rest (2) after a gap (1); training keeps frame 0 (by hand)."""
    with FeatureCache(cache_96) as cache:
        frames = [s for s in cache.samples() if s.file_name.startswith("SYNTH-01/")]
    assert len(frames) == 5
    split = make_split(frames, gap=0.2)
    assert split.unit == "frames"
    assert (split.train.tolist(), split.gap.tolist(), split.holdout.tolist(), split.val.tolist()) == (
        [0],
        [1, 3],
        [2],
        [4],
    )
    described = split.describe(frames)
    assert described["gap_images"] == 2 and described["train_image_ids"] == [frames[0].image_id]
    no_gap = make_split(frames, gap=0.0)
    assert len(no_gap.gap) == 0 and no_gap.train.tolist() == [0, 1, 2]
