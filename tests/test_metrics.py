"""probe_kit's COCO evaluation against the official pycocotools run on the same files."""

import contextlib
import io
import json

import numpy as np
import pytest
from conftest import real_data
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from probe_kit.data.sample import Sample
from probe_kit.metrics.coco import METRIC_KEYS, evaluate, ground_truth_dict


def _official(gt_path, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_matches_pycocotools_on_real_detections():
    folder = real_data("COCO/mmpose_tests_data_coco")
    gt = json.loads((folder / "test_coco.json").read_text())
    dets = json.loads((folder / "test_coco_det_AP_H_56.json").read_text())
    ours = evaluate(gt, dets)
    stats = _official(folder / "test_coco.json", dets)
    for key, value in zip(METRIC_KEYS, stats):
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < ours["AP50"] < 1


def test_confidence_cut_never_raises_ap():
    folder = real_data("COCO/mmpose_tests_data_coco")
    gt = json.loads((folder / "test_coco.json").read_text())
    dets = json.loads((folder / "test_coco_det_AP_H_56.json").read_text())
    full = evaluate(gt, dets)
    cut = evaluate(gt, [d for d in dets if d["score"] >= 0.5])
    assert cut["AP"] <= full["AP"] and cut["AP50"] <= full["AP50"]


def _sample(boxes, ignore=()):
    return Sample(1, "a.jpg", 200, 200, np.array(boxes, float).reshape(-1, 4), np.array(ignore, float).reshape(-1, 4))


def _det(box, score):
    return {"image_id": 1, "category_id": 1, "bbox": list(box), "score": score}


def test_precision_recall_by_hand():
    """Two people; detections: a hit (0.9), a miss (0.8), a hit (0.4). Counted by hand at each cut."""
    gt = ground_truth_dict([_sample([[10, 10, 40, 80], [100, 10, 40, 80]])])
    dets = [_det([10, 10, 40, 80], 0.9), _det([150, 150, 20, 20], 0.8), _det([102, 12, 40, 80], 0.4)]
    result = evaluate(gt, dets, thresholds=(0.3, 0.5, 0.85))
    assert result["at_threshold"]["0.3"]["precision"] == pytest.approx(2 / 3)
    assert result["at_threshold"]["0.3"]["recall"] == pytest.approx(1.0)
    assert result["at_threshold"]["0.5"]["precision"] == pytest.approx(1 / 2)
    assert result["at_threshold"]["0.5"]["recall"] == pytest.approx(1 / 2)
    assert result["at_threshold"]["0.85"]["F1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    # AP50 by hand (101-point interpolation): precision 1 up to recall 0.5, then 2/3 up to recall 1
    assert result["AP50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_pr_curve_stops_at_the_highest_recall_reached():
    gt = ground_truth_dict([_sample([[10, 10, 40, 80], [100, 10, 40, 80]])])
    curve = evaluate(gt, [_det([10, 10, 40, 80], 0.9)])["pr_curve_iou50"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101
    reached = [p for r, p in zip(curve["recall"], curve["precision"]) if r <= 0.5]
    assert reached == pytest.approx([1.0] * len(reached))
    assert all(p is None for r, p in zip(curve["recall"], curve["precision"]) if r > 0.5)


def test_detection_on_ignore_region_is_neither_tp_nor_fp():
    gt = ground_truth_dict([_sample([[10, 10, 40, 80]], ignore=[[100, 10, 40, 80]])])
    result = evaluate(gt, [_det([10, 10, 40, 80], 0.9), _det([100, 10, 40, 80], 0.95)], thresholds=(0.5,))
    assert result["AP50"] == pytest.approx(1.0)
    assert result["at_threshold"]["0.5"]["precision"] == pytest.approx(1.0)
    assert result["num_gt"] == 1


def test_no_detections_and_no_images():
    gt = ground_truth_dict([_sample([[10, 10, 40, 80]])])
    assert evaluate(gt, [])["AP"] == 0.0
    with pytest.raises(ValueError, match="images: expected at least one image"):
        evaluate({"images": [], "annotations": [], "categories": []}, [])


def test_other_categories_do_not_count_as_persons():
    """A full COCO file (icevision: 80 categories, a crowd bottle): only persons are scored and counted."""
    gt = json.loads(real_data("COCO/icevision_samples/annotations.json").read_text())
    persons = [a for a in gt["annotations"] if a["category_id"] == 1]
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in persons]
    result = evaluate(gt, dets, thresholds=(0.5,))
    assert result["num_gt"] == 10
    assert result["AP50"] == pytest.approx(1.0)
    assert result["at_threshold"]["0.5"]["recall"] == pytest.approx(1.0)
