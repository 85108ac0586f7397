"""Property-based tests (hypothesis) of every parser a user's file goes through.

Arbitrary MOT17 gt.txt rows, seqinfo.ini values, COCO ground truth and COCO detections either
parse to finite boxes inside their image or raise ``InputError`` (one line, a ``ValueError``);
never another exception. Each test also holds the parser to an independent oracle written here
from the format's definition, so a parser that refuses good input fails as well as one that lets
bad input through.
"""

from __future__ import annotations

import json
import math
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from probe_kit.data.checks import InputError, check_image_size
from probe_kit.data.coco import check_coco, load_coco
from probe_kit.data.mot17 import load_sequence, read_seqinfo
from probe_kit.metrics.coco import METRIC_KEYS, evaluate

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
W, H, LENGTH = 64, 48, 6

# Text that looks like a number to someone, and text that does not.
SPECIAL = ["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "", " ", "abc", "1,5", "0x10", "1_0", "+3", "2.6e-05", "7."]
number_text = st.one_of(
    st.integers(-200, 200).map(str),
    st.floats(-300, 300, allow_nan=False).map(lambda v: f"{v:.3f}"),
    st.sampled_from(SPECIAL),
    st.text(string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", ""), max_size=6),
)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _gt_row_valid(row: list[str]) -> bool:
    """MOTChallenge's definition, written independently of probe_kit's parser."""
    fields = ",".join(row).strip().split(",")
    if len(fields) < 9:
        return False
    values = [_as_float(f) for f in fields[:9]]
    if any(v is None or not math.isfinite(v) for v in values):
        return False
    frame, ident, left, top, width, height, flag, cls, vis = values
    integral = all(v == int(v) for v in (frame, ident, flag, cls))
    in_range = 1 <= frame <= LENGTH and width > 0 and height > 0 and flag in (0, 1) and 1 <= cls <= 13
    near = -W <= left - 1 and -H <= top - 1 and left - 1 + width <= 2 * W and top - 1 + height <= 2 * H
    return integral and in_range and 0 <= vis <= 1 and near


def _write_seqinfo(seq: Path, width: str, height: str) -> Path:
    ini = seq / "seqinfo.ini"
    ini.write_text(
        f"[Sequence]\nname=SEQ-01\nimDir=img1\nseqLength={LENGTH}\nimWidth={width}\nimHeight={height}\nimExt=.jpg\n"
    )
    return ini


def _sequence(folder: Path, gt_text: str) -> Path:
    seq = folder / "train" / "SEQ-01"
    (seq / "gt").mkdir(parents=True)
    (seq / "img1").mkdir()
    Image.new("RGB", (W, H)).save(seq / "img1" / "000001.jpg")
    Image.new("RGB", (W, H)).save(seq / "img1" / "000002.jpg")
    _write_seqinfo(seq, str(W), str(H))
    (seq / "gt" / "gt.txt").write_text(gt_text)
    return seq


def _assert_in_image(boxes: np.ndarray, width: int, height: int) -> None:
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    assert np.isfinite(boxes).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= width + 1e-9).all() and (boxes[:, 1] + boxes[:, 3] <= height + 1e-9).all()


def _one_line(err: Exception) -> None:
    assert isinstance(err, InputError) and "\n" not in str(err) and str(err)


plausible_row = st.tuples(
    st.integers(1, LENGTH),
    st.integers(1, 9),
    st.integers(-80, 120),
    st.integers(-60, 90),
    st.integers(1, 70),
    st.integers(1, 60),
    st.integers(0, 1),
    st.integers(1, 13),
    st.floats(0, 1),
).map(lambda r: [str(v) for v in r])
any_row = st.lists(number_text, min_size=0, max_size=11)
# a good row with one field replaced: the case where a parser that skips one check is caught
one_bad_field = st.tuples(plausible_row, st.integers(0, 8), number_text).map(
    lambda t: [*t[0][: t[1]], t[2], *t[0][t[1] + 1 :]]
)


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    """One sequence folder (images written once); each example rewrites its gt.txt / seqinfo.ini."""
    return _sequence(tmp_path_factory.mktemp("mot"), "")


@FAST
@given(rows=st.lists(st.one_of(plausible_row, plausible_row, one_bad_field, any_row), max_size=6), crlf=st.booleans())
def test_mot17_gt_rows(seq, rows, crlf):
    _write_seqinfo(seq, str(W), str(H))
    (seq / "gt" / "gt.txt").write_text(("\r\n" if crlf else "\n").join(",".join(r) for r in rows) + "\n")
    try:
        samples = load_sequence(seq, 1)
    except InputError as err:
        _one_line(err)
        assert not all(_gt_row_valid(r) for r in rows if ",".join(r).strip()), f"refused valid rows: {err}"
        return
    assert all(_gt_row_valid(r) for r in rows if ",".join(r).strip()), "accepted an invalid row"
    assert [s.meta["frame"] for s in samples] == [1, 2]
    for sample in samples:
        _assert_in_image(sample.boxes, W, H)
        _assert_in_image(sample.ignore, W, H)


size_text = st.one_of(
    st.integers(-5, 200).map(str), st.sampled_from(SPECIAL + ["64.0", "1e2", str(10**6)]), number_text
)


@FAST
@given(width=size_text, height=size_text, junk=st.sampled_from(["", "[Other]\nx=1\n", "%(x)s=1\n", "no section\n"]))
def test_seqinfo_values_and_image_header(seq, width, height, junk):
    ini = _write_seqinfo(seq, width, height)
    ini.write_text(ini.read_text() + junk if junk != "no section\n" else junk + ini.read_text())
    w, h = _as_float(width), _as_float(height)
    good = all(v is not None and math.isfinite(v) and v == int(v) and 1 <= v <= 99_999 for v in (w, h))
    good = good and junk != "no section\n"
    try:
        info = read_seqinfo(seq)
    except InputError as err:
        _one_line(err)
        assert not good, f"refused a valid seqinfo.ini: {err}"
        return
    assert good and (info.width, info.height, info.length) == (int(w), int(h), LENGTH)
    try:
        check_image_size(seq / "img1" / "000001.jpg", info.width, info.height, str(seq / "seqinfo.ini"))
    except InputError as err:
        _one_line(err)
        assert "seqinfo.ini" in str(err) and (info.width, info.height) != (W, H)
        return
    assert (info.width, info.height) == (W, H)


# JSON values of every kind, including the NaN/Infinity tokens Python's json reads.
json_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**400), 10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
# values that slip past a check that is not there: non-finite, overflowing, of the wrong type
hostile = st.sampled_from(
    [math.nan, math.inf, -math.inf, 10**400, -1, -0.5, 1e300, 2.5, "1", "abc", None, True, [], {}]
)
good_box = st.tuples(st.floats(-10, 30), st.floats(-10, 30), st.floats(0, 40), st.floats(0, 40)).map(list)
bad_box = st.one_of(
    st.tuples(good_box, st.integers(0, 3), hostile).map(lambda t: [*t[0][: t[1]], t[2], *t[0][t[1] + 1 :]]),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=5),
    json_junk,
)
box_value = st.integers(0, 3).flatmap(lambda k: bad_box if k == 0 else good_box)


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """19 times in 20 a valid value; else anything hostile, or left out (``...``)."""
    bad = st.one_of(hostile, json_junk, st.just(...))
    return st.integers(0, 19).flatmap(lambda k: bad if k == 0 else valid)


def _image_record(image_id: int) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "id": _maybe(st.just(image_id)),
            "width": _maybe(st.integers(30, 80)),
            "height": _maybe(st.integers(30, 80)),
            "file_name": _maybe(st.just("a.jpg")),
        }
    )


# images 1..n, so that most annotations name an existing image
images_list = st.integers(0, 3).flatmap(
    lambda n: st.tuples(*[_maybe(_image_record(i + 1)) for i in range(n)]).map(list)
)
annotation_record = st.fixed_dictionaries(
    {
        "id": st.integers(0, 5),
        "image_id": _maybe(st.integers(1, 2)),
        "category_id": _maybe(st.sampled_from([1, 2])),
        "bbox": _maybe(box_value),
        "iscrowd": _maybe(st.sampled_from([0, 1])),
        "area": _maybe(st.floats(0, 5000)),  # present: the vectorised path; missing: the per-field one
    }
)


def _drop_missing(value):
    if isinstance(value, dict):
        return {k: _drop_missing(v) for k, v in value.items() if v is not ...}
    if isinstance(value, list):
        return [_drop_missing(v) for v in value if v is not ...]
    return value


coco_gt = st.fixed_dictionaries(
    {
        "images": _maybe(images_list),
        "annotations": _maybe(st.lists(_maybe(annotation_record), max_size=4)),
        "categories": _maybe(st.just([{"id": 1, "name": "person"}, {"id": 2, "name": "car"}])),
    }
).map(_drop_missing)


def _finite_number(v, lo=-math.inf, hi=math.inf, integer=False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        x = float(v)
    except OverflowError:
        return False
    return math.isfinite(x) and lo <= x <= hi and (not integer or x == int(x))


def _coco_valid(gt: dict) -> bool:
    """The COCO format's definition (cocodataset.org/#format-data), independently of probe_kit."""
    if not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        return False
    for c in gt["categories"]:
        if not isinstance(c, dict) or not _finite_number(c.get("id"), integer=True):
            return False
        if "name" in c and not isinstance(c["name"], str):
            return False
    sizes = {}
    for img in gt["images"]:
        if not isinstance(img, dict) or not _finite_number(img.get("id"), integer=True) or img["id"] in sizes:
            return False
        if not all(_finite_number(img.get(k), 1, 100_000, integer=True) for k in ("width", "height")):
            return False
        if "file_name" in img and not (isinstance(img["file_name"], str) and img["file_name"].strip()):
            return False
        sizes[img["id"]] = (img["width"], img["height"])
    for ann in gt["annotations"]:
        if not isinstance(ann, dict) or not _finite_number(ann.get("image_id"), integer=True):
            return False
        if ann["image_id"] not in sizes:
            return False
        if not _finite_number(ann.get("category_id"), integer=True):
            return False
        if not _finite_number(ann.get("iscrowd", 0), 0, 1, integer=True):
            return False
        if "area" in ann and not _finite_number(ann["area"], 0):
            return False
        box = ann.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_finite_number(v) for v in box):
            return False
        x, y, w, h = box
        iw, ih = sizes[ann["image_id"]]
        if w < 0 or h < 0 or x < -iw or y < -ih or x + w > 2 * iw or y + h > 2 * ih:
            return False
    return True


def _loadable(gt: dict) -> bool:
    """What ``load_coco`` needs beyond valid COCO: file names, and a category named person."""
    named = all("file_name" in image for image in gt["images"])
    return named and any(c.get("name") == "person" for c in gt["categories"])


@FAST
@given(gt=coco_gt)
def test_coco_ground_truth(gt):
    valid = _coco_valid(gt)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(gt))  # NaN/Infinity tokens included, as json.dumps writes them
        try:
            samples = load_coco(path, Path(tmp))
        except InputError as err:
            _one_line(err)
            assert str(path) in str(err)
            assert not (valid and _loadable(gt)), f"refused valid COCO: {err}"
            return
    assert valid and _loadable(gt)
    for sample in samples:
        _assert_in_image(sample.boxes, sample.width, sample.height)
        _assert_in_image(sample.ignore, sample.width, sample.height)


GT = {
    "images": [{"id": 1, "width": 60, "height": 60}, {"id": 2, "width": 80, "height": 40}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [40, 0, 30, 30], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1},
    ],
    "categories": [{"id": 1, "name": "person"}],
}
detection = st.fixed_dictionaries(
    {
        "image_id": _maybe(st.sampled_from([1, 2])),
        "category_id": _maybe(st.just(1)),
        "bbox": _maybe(box_value),
        "score": _maybe(st.floats(0, 1)),
    }
).map(_drop_missing)


def _detection_valid(d) -> bool:
    if not isinstance(d, dict) or isinstance(d.get("image_id"), bool) or d.get("image_id") not in (1, 2):
        return False
    box = d.get("bbox")
    box_ok = isinstance(box, list) and len(box) == 4 and all(_finite_number(v) for v in box)
    box_ok = box_ok and box[2] >= 0 and box[3] >= 0
    return box_ok and _finite_number(d.get("category_id"), integer=True) and _finite_number(d.get("score"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dets=st.one_of(st.lists(st.one_of(detection, detection, json_junk), max_size=5), json_junk))
def test_coco_detections(dets):
    valid = isinstance(dets, list) and all(_detection_valid(d) for d in dets)
    try:
        result = evaluate(GT, json.loads(json.dumps(dets)), names=("gt.json", "dets.json"))
    except InputError as err:
        _one_line(err)
        assert "dets.json" in str(err) and not valid, f"refused valid detections: {err}"
        return
    assert valid
    for key in METRIC_KEYS:
        assert result[key] == -1 or 0 <= result[key] <= 1, key


def test_check_coco_normalises_and_renumbers():
    """ids and sizes written as 1.0 become ints; annotation ids 1..N (pycocotools reads id 0 as unmatched)."""
    gt = {
        "images": [{"id": 7.0, "width": 60.0, "height": 40}],
        "annotations": [{"id": 0, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 1}],
    }
    out = check_coco(gt, "x.json")
    assert out["images"] == [{"id": 7, "width": 60, "height": 40}]
    assert out["annotations"] == [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0, "iscrowd": 0}
    ]
    assert all(type(v) is int for v in out["images"][0].values())


@FAST
@given(gt=coco_gt)
def test_vectorised_and_per_field_coco_checks_agree(gt):
    """With ``area`` in every annotation the vectorised path runs; without, the per-field one: same result."""
    try:
        fast = check_coco(gt, "gt.json")
    except InputError:
        return
    slow_input = json.loads(json.dumps(gt))
    for ann in slow_input["annotations"]:
        ann.pop("area", None)
    slow = check_coco(slow_input, "gt.json")
    for a, b in zip(fast["annotations"], slow["annotations"], strict=True):
        assert {**a, "area": None} == {**b, "area": None}
        assert type(a["image_id"]) is type(b["image_id"]) is int and all(type(v) is float for v in a["bbox"])
