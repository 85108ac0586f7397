"""The HDF5 feature cache: contents equal the model's own tensors, resume is exact, mismatches refused."""

import h5py
import numpy as np
import pytest
import torch
from conftest import make_tiny_yolos, write_tiny_cache

from probe_kit.cache import writer as writer_module
from probe_kit.cache.reader import FeatureCache
from probe_kit.cache.writer import write_cache
from probe_kit.data.spec import parse_data_spec
from probe_kit.models.layers import resolve_layers
from probe_kit.models.loading import ModelSpec, load_yolos


def _write(tiny_model, synth_dir, out, **kw):
    kw.setdefault("tokens", ["det", "patch", "cls"])
    return write_tiny_cache(tiny_model, synth_dir, out, **kw)


@pytest.fixture(scope="module")
def cache_file(tiny_model, synth_dir, tmp_path_factory):
    return _write(tiny_model, synth_dir, tmp_path_factory.mktemp("c") / "c.h5", dtype="float32")


def test_features_equal_the_models_hidden_states(tiny_model, synth_dir, cache_file):
    model, processor = load_yolos(ModelSpec(str(tiny_model)))
    samples = parse_data_spec(f"synth:{synth_dir}").load()
    pixels = processor(images=[s.load_image() for s in samples[:4]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    with FeatureCache(cache_file) as cache:
        assert cache.layers == (1, 2, 3, 4)
        for layer in cache.layers:
            states = out.hidden_states[layer].numpy()
            np.testing.assert_allclose(cache.read(layer, "det", slice(0, 4)), states[:, -5:], atol=1e-6)
            np.testing.assert_allclose(cache.read(layer, "patch", slice(0, 4)), states[:, 1:17], atol=1e-6)
            np.testing.assert_allclose(cache.read(layer, "cls", slice(0, 4)), states[:, :1], atol=1e-6)
        logits, boxes = cache.final_outputs()
        np.testing.assert_allclose(logits[:4], out.logits.numpy(), atol=1e-6)
        np.testing.assert_allclose(boxes[:4], out.pred_boxes.numpy(), atol=1e-6)
        assert cache.layout.grid_h == cache.layout.grid_w == 4
        gt = cache.samples()
        np.testing.assert_allclose(gt[0].boxes, samples[0].boxes, atol=1e-4)
        assert gt[0].meta["difficulty"] == samples[0].meta["difficulty"]
        # indexed reads keep the requested order
        np.testing.assert_array_equal(cache.read(2, "det", np.array([3, 0])), cache.read(2, "det")[[3, 0]])


def test_metadata_needed_to_trust_it(cache_file):
    with h5py.File(cache_file) as h5:
        for key in (
            "schema_version",
            "model",
            "preprocessing",
            "dataset",
            "options",
            "versions",
            "created",
            "complete",
            "layout",
        ):
            assert key in h5.attrs, key
        assert h5.attrs["complete"]


def test_interrupted_run_resumes_to_identical_file(tiny_model, synth_dir, tmp_path, monkeypatch):
    reference = _write(tiny_model, synth_dir, tmp_path / "full.h5")
    real_write = writer_module._write_batch
    calls = {"n": 0}

    def failing(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real_write(*args, **kwargs)

    monkeypatch.setattr(writer_module, "_write_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        _write(tiny_model, synth_dir, tmp_path / "resumed.h5")
    with pytest.raises(ValueError, match="incomplete cache \\(8 of 12"):
        FeatureCache(tmp_path / "resumed.h5")
    monkeypatch.setattr(writer_module, "_write_batch", real_write)
    _write(tiny_model, synth_dir, tmp_path / "resumed.h5")
    with FeatureCache(reference) as a, FeatureCache(tmp_path / "resumed.h5") as b:
        for layer in a.layers:
            for role in a.tokens:
                np.testing.assert_array_equal(a.read(layer, role), b.read(layer, role))
        np.testing.assert_array_equal(a.final_outputs()[0], b.final_outputs()[0])


def test_appending_with_another_model_is_refused(tiny_model, synth_dir, tmp_path):
    path = tmp_path / "c.h5"
    _write(tiny_model, synth_dir, path)
    other = make_tiny_yolos(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="refusing to append, model differs"):
        write_cache(
            ModelSpec(str(other)),
            parse_data_spec(f"synth:{synth_dir}"),
            "all",
            ["det", "patch", "cls"],
            path,
            batch_size=4,
            progress=False,
        )
    with pytest.raises(ValueError, match="options differs"):
        _write(tiny_model, synth_dir, path, tokens=["det"])


def test_layer_out_of_range_leaves_no_file(tiny_model, synth_dir, tmp_path):
    with pytest.raises(ValueError, match="layer 13 out of range; this model has blocks 1..4"):
        _write(tiny_model, synth_dir, tmp_path / "x.h5", layers="13")
    assert not (tmp_path / "x.h5").exists()


def test_other_schema_version_is_refused(cache_file, tmp_path):
    copy = tmp_path / "old.h5"
    copy.write_bytes(cache_file.read_bytes())
    with h5py.File(copy, "r+") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        FeatureCache(copy)


def test_reader_errors_name_what_is_missing(cache_file):
    with FeatureCache(cache_file) as cache:
        with pytest.raises(ValueError, match="layer 7 not cached"):
            cache.read(7)


def test_patch_tokens_need_one_input_size(tiny_model, tmp_path):
    from conftest import real_data

    ann = real_data("COCO/icevision_samples/annotations.json")
    with pytest.raises(ValueError, match="need one grid"):
        write_cache(
            ModelSpec(str(tiny_model)),
            parse_data_spec(f"coco:{ann}"),
            "all",
            ["patch"],
            tmp_path / "p.h5",
            progress=False,
        )
    assert not (tmp_path / "p.h5").exists()


@pytest.mark.parametrize(
    "text,expected",
    [("all", (1, 2, 3, 4)), ("3,1", (1, 3)), ("2-4", (2, 3, 4)), ("-1", (4,)), ("embeddings,-2", (0, 3))],
)
def test_layer_selection(text, expected):
    assert resolve_layers(text, 4) == expected


def test_attention_maps_are_the_rollout_of_the_models_attentions(tiny_model, synth_dir, tmp_path):
    from probe_kit.ops.rollout import attention_rollout

    path = _write(
        tiny_model,
        synth_dir,
        tmp_path / "a.h5",
        layers="2,4",
        tokens=["det"],
        dtype="float32",
        attention=True,
        head_fusion="max",
        discard_ratio=0.2,
    )
    model, processor = load_yolos(ModelSpec(str(tiny_model)))
    samples = parse_data_spec(f"synth:{synth_dir}").load()
    pixels = processor(images=[s.load_image() for s in samples[:4]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        attentions = model(pixel_values=pixels, output_attentions=True).attentions
    with FeatureCache(path) as cache:
        assert cache.options["head_fusion"] == "max" and cache.options["discard_ratio"] == 0.2
        for layer in (2, 4):
            expected = attention_rollout(attentions[:layer], "max", 0.2)[:, -5:, 1:17]
            np.testing.assert_allclose(cache.read(layer, "rollout_det", slice(0, 4)), expected.numpy(), atol=1e-6)
            raw = attentions[layer - 1].max(1).values[:, -5:, 1:17]
            np.testing.assert_allclose(cache.read(layer, "attn_det", slice(0, 4)), raw.numpy(), atol=1e-6)
