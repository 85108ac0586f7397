"""Images are decoded right or refused by name, never skipped or whitened in silence; MOT17's detector copies can
be chosen (issue: held out by content, and no number from a broken input)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import real_data
from PIL import Image

from probe_kit.cli.main import cli
from probe_kit.data.mot17 import DETECTORS
from probe_kit.data.spec import parse_data_spec


@pytest.fixture()
def scenes(synth_dir, tmp_path):
    copy = tmp_path / "scenes"
    shutil.copytree(synth_dir, copy)
    return copy


def _cache(tiny_model, data: str, out, *extra: str):
    return CliRunner().invoke(cli, ["cache", "--model", str(tiny_model), "--data", data, *extra, "--out", str(out)])


def _refused(result, *words: str) -> str:
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in result.output, result.output
    for word in words:
        assert word in line, (word, line)
    return line


def test_a_16_bit_frame_is_refused_not_cached_as_white(scenes, tiny_model, tmp_path):
    frame = scenes / "train" / "SYNTH-02" / "img1" / "000002.jpg"
    pixels = np.asarray(Image.open(frame).convert("L"), dtype=np.uint16) * 257
    frame.unlink()
    Image.fromarray(pixels).save(frame.with_suffix(".jpg"), format="PNG")  # 16-bit PNG bytes under the frame's name
    assert Image.open(frame).mode.startswith("I")
    _refused(_cache(tiny_model, f"synth:{scenes}", tmp_path / "c.h5"), str(frame), "8-bit image", "I;16")
    assert not (tmp_path / "c.h5").exists()


def test_a_palette_frame_is_decoded_like_its_rgb(scenes):
    frame = scenes / "train" / "SYNTH-01" / "img1" / "000001.jpg"
    rgb = Image.open(frame).convert("RGB")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(frame, format="PNG")
    sample = parse_data_spec(f"synth:{scenes}").load()[0]
    decoded = np.asarray(sample.load_image(), dtype=np.int16)
    assert decoded.shape == np.asarray(rgb).shape
    assert np.abs(decoded - np.asarray(rgb, dtype=np.int16)).mean() < 8  # the palette's quantisation only


def test_a_decompression_bomb_is_refused_by_name(scenes, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256 * 256 // 3)  # a 256x256 frame is then over twice the limit
    result = _cache(tiny_model, f"synth:{scenes}", tmp_path / "c.h5")
    _refused(result, "SYNTH-01/img1/000001.jpg", "unreadable image", "decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256 * 256 - 1)  # over the limit but under twice it: a warning
    sample = parse_data_spec(f"synth:{scenes}").load()[0]
    with pytest.raises(ValueError, match="000001.jpg: unreadable image .*decompression bomb"):
        sample.load_image()


@pytest.mark.parametrize("kind", ["dangling symlink", "directory"])
def test_a_frame_that_is_no_file_is_refused_not_skipped(scenes, tiny_model, tmp_path, kind):
    frame = scenes / "train" / "SYNTH-03" / "img1" / "000001.jpg"
    frame.unlink()
    if kind == "directory":
        frame.mkdir()
    else:
        frame.symlink_to(tmp_path / "gone.jpg")
    expected = "a dangling symlink" if kind == "dangling symlink" else "not a regular file"
    _refused(_cache(tiny_model, f"synth:{scenes}", tmp_path / "c.h5"), str(frame), expected)


def test_detector_copies_can_be_chosen_and_a_root_without_the_default_says_which_it_has(synth_dir, tmp_path):
    root = tmp_path / "mot17"
    for number, source in ((2, "SYNTH-01"), (4, "SYNTH-02")):
        target = root / "train" / f"MOT17-{number:02d}-DPM"
        shutil.copytree(synth_dir / "train" / source, target)
        info = target / "seqinfo.ini"
        info.write_text(info.read_text().replace(f"name = {source}", f"name = {target.name}"))
    result = CliRunner().invoke(
        cli, ["data", "export-coco", "--data", f"mot17:{root}", "--out", str(tmp_path / "a.json")]
    )
    _refused(result, "no FRCNN copies of the sequences, only DPM", "--detector DPM")
    result = CliRunner().invoke(
        cli, ["data", "export-coco", "--data", f"mot17:{root}", "--detector", "DPM", "--out", str(tmp_path / "b.json")]
    )
    assert result.exit_code == 0 and "wrote 10 images" in result.output, result.output


def test_the_cli_offers_every_detector_the_loader_knows():
    from probe_kit.cli.options import data_options

    params = {p.name: p for p in data_options(lambda **_: None).__click_params__}
    assert tuple(params["detector"].type.choices) == DETECTORS


def test_frames_listed_without_an_image_are_named_in_a_warning_and_counted_in_the_cache(scenes, tiny_model, tmp_path):
    frames = scenes / "train" / "SYNTH-02" / "img1"
    for name in ("000002.jpg", "000003.jpg", "000005.jpg"):
        (frames / name).unlink()
    out = tmp_path / "c.h5"
    made = _cache(tiny_model, f"synth:{scenes}", out)
    assert made.exit_code == 0, made.output
    warning = f"warning: {frames}: 3 of the 5 frames that seqinfo.ini lists have no image file and are skipped: "
    assert f"{warning}000002-000003, 000005\n" in made.stderr
    info = CliRunner().invoke(cli, ["cache", "info", str(out)])
    assert "skipped:      3 listed frames had no image file (SYNTH-02 3)" in info.output, info.output
    with h5py.File(out) as handle:
        assert json.loads(handle.attrs["skipped_frames"]) == {"SYNTH-02": 3}
        assert len(handle["images/image_id"]) == 12 - 3


def test_a_complete_dataset_warns_of_nothing_and_records_no_skipped_frame(synth_dir, tiny_model, tmp_path):
    made = _cache(tiny_model, f"synth:{synth_dir}", tmp_path / "c.h5")
    assert made.exit_code == 0 and "warning" not in made.stderr, made.output
    with h5py.File(tmp_path / "c.h5") as handle:
        assert json.loads(handle.attrs["skipped_frames"]) == {}


def test_the_real_excerpts_name_the_frames_of_each_sequence_they_leave_out():
    root = real_data("MOT17")
    spec = parse_data_spec(f"mot17:{root}", stride=2)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        samples = spec.load()
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 6  # one per sequence: each excerpt holds the first 4-7 frames of a long sequence
    folder = root / "train" / "MOT17-02-FRCNN" / "img1"  # 600 frames listed, 000001-000004 present
    assert lines[0] == (
        f"warning: {folder}: 298 of the 300 frames that seqinfo.ini lists (stride 2) have no image file and are "
        "skipped: 000005-000599"
    )
    counts = spec.skipped_frames()
    assert sum(counts.values()) + len(samples) == sum(
        len(range(1, int(_seq_length(root / "train" / name)) + 1, 2)) for name in counts
    )


def _seq_length(folder: Path) -> str:
    return next(line.split("=")[1] for line in (folder / "seqinfo.ini").read_text().splitlines() if "seqLength" in line)
