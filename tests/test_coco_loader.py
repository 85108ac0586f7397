"""COCO-format loading against real COCO excerpts in ../shared/data/real/COCO."""

import json

import pytest
from conftest import real_data

from probe_kit.data.coco import load_coco
from probe_kit.data.spec import DataSpec, parse_data_spec


def test_icevision_persons_crowd_and_empty_image():
    ann = real_data("COCO/icevision_samples/annotations.json")
    samples = {s.image_id: s for s in load_coco(ann)}
    assert len(samples) == 6  # the image without annotations stays (negatives count)
    assert len(samples[128372].boxes) == 9 and len(samples[404249].boxes) == 1
    assert len(samples[89].boxes) == 0
    assert sum(len(s.ignore) for s in samples.values()) == 0  # the crowd annotation is a bottle
    bottles = load_coco(ann, categories=("bottle",))
    assert sum(len(s.ignore) for s in bottles) == 1  # iscrowd: 1 -> ignore region
    assert samples[128372].load_image().size == (640, 427)


def test_mmpose_excerpt_and_spec_with_image_dir():
    ann = real_data("COCO/mmpose_tests_data_coco/test_coco.json")
    spec = parse_data_spec(f"coco:{ann}:{ann.parent}")
    samples = spec.load()
    assert len(samples) == 4 and sum(len(s.boxes) for s in samples) == 14
    assert spec.images == str(ann.parent)


def test_bad_json_and_missing_fields(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid COCO annotations"):
        load_coco(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="partial.json: annotations: expected a list, got nothing"):
        load_coco(partial)


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="expected mot17:ROOT"):
        parse_data_spec("kitti:/x")
    with pytest.raises(ValueError, match="does not exist"):
        parse_data_spec(f"synth:{tmp_path / 'nothing'}")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        parse_data_spec(f"mot17:{tmp_path}").load()


def test_spec_description_round_trips():
    ann = real_data("COCO/mmpose_tests_data_coco/test_coco.json")
    spec = parse_data_spec(f"coco:{ann}:{ann.parent}", stride=2)
    again = DataSpec.from_description(json.loads(json.dumps(spec.describe())))  # as stored in a cache
    assert [s.image_id for s in again.load()] == [s.image_id for s in spec.load()]


def test_declared_size_must_match_the_image_header(tmp_path):
    """A JSON width that disagrees with the image would misplace every normalised box: refused, naming both."""
    ann = real_data("COCO/icevision_samples/annotations.json")
    data = json.loads(ann.read_text())
    index = next(i for i, img in enumerate(data["images"]) if img["id"] == 128372)
    data["images"][index]["width"] = 320  # the file is 640x427
    wrong = tmp_path / "annotations.json"
    wrong.write_text(json.dumps(data))
    with pytest.raises(
        ValueError,
        match=rf"000000128372\.jpg: expected the size 320x427 that .*annotations\.json: images\[{index}\] "
        "declares, got 640x427",
    ):
        load_coco(wrong, ann.parent / "images")


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda d: d["images"][0].pop("id"), r"images\[0\]\.id"),
        (lambda d: d.update(images={"id": 1}), r"images: expected a list"),
        (lambda d: d["images"][0].update(width="wide"), r"images\[0\]\.width: expected an integer"),
        (lambda d: d["annotations"][0].update(bbox="abcd"), r"annotations\[0\]\.bbox"),
        (lambda d: d["annotations"][0].update(bbox=[1, float("nan"), 2, 3]), r"annotations\[0\]\.bbox.*nan"),
        (lambda d: d["annotations"][0].update(image_id=-5), r"annotations\[0\]\.image_id.*-5"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"images\[\d+\]\.id: expected ids that are unique"),
    ],
)
def test_malformed_records_name_file_and_field(tmp_path, change, field):
    data = json.loads(real_data("COCO/icevision_samples/annotations.json").read_text())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"bad.json: {field}"):
        load_coco(path)
