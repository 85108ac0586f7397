"""The MOT17 loader against the real files in ../shared/data/real/MOT17 (see its PROVENANCE.md)."""

import shutil

import numpy as np
import pytest
from conftest import real_data

from probe_kit.data.mot17 import load_mot17, read_gt

# From PROVENANCE.md: considered pedestrian boxes (flag=1, class=1) in the frames that have images.
PERSONS_IN_IMAGE_FRAMES = {"02": 88, "05": 45, "09": 24, "10": 95, "11": 119, "13": 107}


@pytest.fixture(scope="module")
def mot_root():
    return real_data("MOT17")


def test_counts_match_provenance(mot_root):
    for seq, expected in PERSONS_IN_IMAGE_FRAMES.items():
        samples = load_mot17(mot_root, sequences=[seq])
        assert sum(len(s.boxes) for s in samples) == expected, seq
    assert len(load_mot17(mot_root)) == 31  # frames with images only, though seqLength is 525..900


def test_ignore_regions_are_the_ignore_classes(mot_root):
    """Independent count straight from gt.txt: classes 2, 7, 8, 12 in frame 1 of MOT17-02."""
    rows = [line.split(",") for line in (mot_root / "train/MOT17-02-FRCNN/gt/gt.txt").read_text().splitlines()]
    expected = sum(1 for r in rows if int(r[0]) == 1 and int(r[7]) in (2, 7, 8, 12))
    sample = load_mot17(mot_root, sequences=["MOT17-02"])[0]
    assert sample.meta["frame"] == 1
    assert len(sample.ignore) == expected > 0


def test_boxes_are_zero_based_and_clipped(mot_root):
    samples = load_mot17(mot_root, sequences=["05"])
    for s in samples:
        for boxes in (s.boxes, s.ignore):
            assert (boxes[:, :2] >= 0).all()
            assert (boxes[:, 0] + boxes[:, 2] <= s.width + 1e-9).all()
            assert (boxes[:, 1] + boxes[:, 3] <= s.height + 1e-9).all()
    # first row of MOT17-02 frame 1 for a pedestrian, by hand from gt.txt (1-based) -> 0-based
    rows = [r.split(",") for r in (mot_root / "train/MOT17-02-FRCNN/gt/gt.txt").read_text().splitlines()]
    first = next(r for r in rows if r[0] == "1" and r[6] == "1" and r[7] == "1")
    box = [float(first[2]) - 1, float(first[3]) - 1, float(first[4]), float(first[5])]
    sample = load_mot17(mot_root, sequences=["02"])[0]
    assert any(np.allclose(b, box) for b in sample.boxes)


def test_scientific_notation_visibility_is_read(mot_root):
    gt = read_gt(mot_root / "train/MOT17-02-FRCNN/gt/gt.txt")
    visibilities = [row[6] for rows in gt.values() for row in rows]
    assert any(0 < v < 1e-3 for v in visibilities)  # e.g. 2.6772e-05


def test_min_visibility_turns_persons_into_ignore(mot_root):
    full = load_mot17(mot_root, sequences=["02"])
    strict = load_mot17(mot_root, sequences=["02"], min_visibility=0.5)
    assert sum(len(s.boxes) for s in strict) < sum(len(s.boxes) for s in full)
    total = lambda ss: sum(len(s.boxes) + len(s.ignore) for s in ss)  # noqa: E731
    assert total(strict) == total(full)


def test_split_stride_and_selection(mot_root):
    first = load_mot17(mot_root, sequences=["02"], split="first-half")
    second = load_mot17(mot_root, sequences=["02"], split="second-half")
    assert len(first) == 4 and second == []  # images exist only for frames 1-4 of 600
    assert [s.meta["frame"] for s in load_mot17(mot_root, sequences=["05"], stride=2)] == [1, 3, 5]
    assert load_mot17(mot_root, sequences=["MOT17-05-FRCNN"])[0].image_id == load_mot17(mot_root)[4].image_id


def test_unknown_sequence_names_what_exists(mot_root):
    with pytest.raises(ValueError, match="unknown sequence '99'.*MOT17-02-FRCNN"):
        load_mot17(mot_root, sequences=["99"])


def test_missing_seqinfo_and_malformed_row(tmp_path, mot_root):
    root = tmp_path / "mot"
    shutil.copytree(mot_root / "train/MOT17-05-FRCNN", root / "train/MOT17-05-FRCNN")
    gt = root / "train/MOT17-05-FRCNN/gt/gt.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "1,2,oops,4"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"gt\.txt:3: expected frame,id,left"):
        load_mot17(root)
    (root / "train/MOT17-05-FRCNN/seqinfo.ini").unlink()
    with pytest.raises(ValueError, match=r"seqinfo\.ini: missing"):
        load_mot17(root)


def test_images_decode_at_seqinfo_size(mot_root):
    sample = load_mot17(mot_root, sequences=["05"])[0]
    image = sample.load_image()
    assert image.size == (sample.width, sample.height) == (640, 480)
