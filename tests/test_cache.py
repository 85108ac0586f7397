"""The HDF5 feature cache: contents equal the model's own tensors, resume is exact, mismatches refused."""

import re
import shutil
from pathlib import Path

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
    with pytest.raises(ValueError, match="options differ from the existing cache"):
        _write(tiny_model, synth_dir, path, tokens=["det"])


def test_layer_out_of_range_leaves_no_file(tiny_model, synth_dir, tmp_path):
    with pytest.raises(ValueError, match="layer 13 out of range; this model has blocks 1..4"):
        _write(tiny_model, synth_dir, tmp_path / "x.h5", layers="13")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "version,message",
    [
        (99, "cache schema version 99 was written by a newer probe_kit; this one reads version 3"),
        (2, "cache schema version 2 was written by an older probe_kit; this one reads version 3 .*write a new cache"),
        ("1", r"schema_version is '1' \(str\), not an integer; probe_kit caches store the integer 3"),
    ],
)
def test_other_schema_version_is_refused(cache_file, tmp_path, version, message):
    copy = tmp_path / "old.h5"
    copy.write_bytes(cache_file.read_bytes())
    with h5py.File(copy, "r+") as h5:
        h5.attrs["schema_version"] = version
    with pytest.raises(ValueError, match=message):
        FeatureCache(copy)


def test_reader_errors_name_what_is_missing(cache_file):
    with FeatureCache(cache_file) as cache, pytest.raises(ValueError, match="layer 7 not cached"):
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


def _scenes(synth_dir, tmp_path) -> Path:
    """A private copy of the synthetic scenes, free to damage."""
    return Path(shutil.copytree(synth_dir, tmp_path / "scenes"))


def _interrupt_after_one_batch(tiny_model, data, out, monkeypatch) -> None:
    real_write = writer_module._write_batch

    def failing(handle, batch, *args):
        if batch.start > 0:
            raise KeyboardInterrupt("simulated interruption")
        return real_write(handle, batch, *args)

    monkeypatch.setattr(writer_module, "_write_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        write_tiny_cache(tiny_model, data, out)
    monkeypatch.setattr(writer_module, "_write_batch", real_write)


def test_a_deleted_cached_frame_is_refused_on_resume(tiny_model, synth_dir, tmp_path, monkeypatch):
    data, out = _scenes(synth_dir, tmp_path), tmp_path / "c.h5"
    _interrupt_after_one_batch(tiny_model, data, out, monkeypatch)
    (data / "train/SYNTH-01/img1/000002.jpg").unlink()
    with pytest.raises(ValueError, match="the dataset changed since this cache was made .image SYNTH-01/000002.jpg is"):
        write_tiny_cache(tiny_model, data, out)
    with FeatureCache(out, allow_incomplete=True) as cache:
        assert cache.num_images == 4  # nothing was appended


def test_changed_ground_truth_or_image_is_refused_and_verify_names_it(tiny_model, synth_dir, tmp_path):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    data = _scenes(synth_dir, tmp_path)
    out = write_tiny_cache(tiny_model, data, tmp_path / "c.h5")
    verified = CliRunner().invoke(cli, ["cache", "verify", str(out)])
    assert verified.exit_code == 0
    assert verified.stdout == (
        f"OK: {out} matches its dataset (12 images, 9 annotation files, sha256) and its 6 feature and output "
        "datasets their checksums\n"
    )
    (data / "train/SYNTH-02/gt/gt.txt").write_text("")
    with pytest.raises(ValueError, match=r"\(SYNTH-02/gt/gt.txt changed\)"):
        write_tiny_cache(tiny_model, data, out)  # a complete cache is checked too, not reported complete
    with FeatureCache(out) as cache, pytest.raises(ValueError, match="SYNTH-02/gt/gt.txt changed"):
        cache.load_dataset()
    refused = CliRunner().invoke(cli, ["cache", "verify", str(out)])
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1].startswith(f"Error: {out}: the dataset changed since this cache was made")
    assert refused.stderr.splitlines()[-1].endswith(
        "(SYNTH-02/gt/gt.txt changed); restore it, or write a new cache to another file"
    )
    (data / "train/SYNTH-02/gt/gt.txt").write_bytes((synth_dir / "train/SYNTH-02/gt/gt.txt").read_bytes())
    frame = data / "train/SYNTH-03/img1/000001.jpg"
    frame.write_bytes(frame.read_bytes() + b"\0")  # same name, other bytes
    with FeatureCache(out) as cache:
        with pytest.raises(ValueError, match="image SYNTH-03/000001.jpg changed"):
            cache.load_dataset()
        assert len(cache.load_dataset(image_ids={cache.image_ids()[0]})) == 12  # only the asked images are hashed


@pytest.mark.parametrize(
    "recorded,live,expected",
    [
        ({"a": "1"}, {}, "a is gone"),
        ({}, {"a": "1"}, "a was added"),
        ([("x", "1"), ("y", "2")], [("y", "2")], "image x is missing"),
        ([("y", "2")], [("x", "1"), ("y", "2")], "image x was added"),
        ([("x", "1"), ("y", "2")], [("y", "2"), ("x", "1")], "images reordered at x"),
        ([("x", "1")], [("x", "1"), ("y", "2")], "image y was added"),
        ([("x", "1")], [("x", "")], None),  # "" = not hashed this time
    ],
)
def test_first_data_difference(recorded, live, expected):
    from probe_kit.data.identity import DataIdentity

    def identity(value):
        return DataIdentity(value, ()) if isinstance(value, dict) else DataIdentity({}, tuple(value))

    assert identity(recorded).first_difference(identity(live)) == expected


def test_foreign_or_damaged_files_at_out_are_refused_in_one_line(tiny_model, synth_dir, cache_file, tmp_path):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    text, truncated, plain = tmp_path / "notes.h5", tmp_path / "cut.h5", tmp_path / "plain.h5"
    text.write_text("my notes, not a cache\n")
    truncated.write_bytes(cache_file.read_bytes()[:4096])
    with h5py.File(plain, "w") as h5:
        h5["x"] = [1, 2]
    cases = {
        text: "not an HDF5 file, so not a feature cache; refusing to read or overwrite it",
        truncated: "an HDF5 file that cannot be opened .*delete it and run `probe-kit cache` again",
        plain: "an HDF5 file without a schema_version attribute, so not a probe_kit feature cache",
    }
    for path, message in cases.items():
        before = path.read_bytes()
        args = ["cache", "--model", str(tiny_model), "--data", f"synth:{synth_dir}", "--out", str(path)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert re.search(message, result.output), result.output
        assert path.read_bytes() == before
        with pytest.raises(ValueError, match=message):
            FeatureCache(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.h5", "notes.h5", "plain.h5"]  # no lock left


def test_a_leftover_partial_file_is_replaced(tiny_model, synth_dir, cache_file, tmp_path):
    out = tmp_path / "c.h5"
    (tmp_path / ".c.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n truncated by a kill")
    write_tiny_cache(tiny_model, synth_dir, out, tokens=("det", "patch", "cls"), dtype="float32")
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]
    with FeatureCache(out) as a, FeatureCache(cache_file) as b:
        np.testing.assert_array_equal(a.read(3, "patch"), b.read(3, "patch"))


def test_dry_run_predicts_the_cache_size_and_writes_nothing(tiny_model, synth_dir, tmp_path):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    args = ["cache", "--model", str(tiny_model), "--data", f"synth:{synth_dir}", "--tokens", "det,patch", "--attention"]
    planned = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "c.h5"), "--dry-run"])
    assert planned.exit_code == 0 and not (tmp_path / "c.h5").exists(), planned.output
    total = re.search(r"per image, ([0-9.]+) kB in all", planned.output)
    assert total and "fits" in planned.output, planned.output
    assert CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "c.h5")]).exit_code == 0
    with h5py.File(tmp_path / "c.h5") as h5:  # what the writer allocated, read back from the file
        per_image = [h5[p] for p in ("images/input_size", "final/logits", "final/pred_boxes")]
        h5["layers"].visititems(lambda _, d: per_image.append(d) if isinstance(d, h5py.Dataset) else None)
        written = sum(d.size * d.dtype.itemsize for d in per_image)
    assert abs(float(total.group(1)) * 1e3 - written) <= 50  # printed to 0.1 kB
