"""COCO evaluation over pycocotools: AP on the full ranked list, P/R/F1 at score thresholds.

AP never sees a confidence cut (cutting can only lower AP; see facts.md). Precision, recall
and F1 at chosen thresholds come from the same COCOeval matching at IoU 0.5, so they agree
with AP50 about which detections are true positives and which are ignored.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from probe_kit.data.sample import Sample

PERSON_CATEGORY_ID = 1
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def ground_truth_dict(samples: Iterable[Sample]) -> dict:
    """COCO ground-truth dict: persons with ``iscrowd: 0``, ignore regions with ``iscrowd: 1``."""
    images, annotations = [], []
    for sample in samples:
        images.append(
            {"id": int(sample.image_id), "file_name": sample.file_name, "width": sample.width, "height": sample.height}
        )
        for boxes, crowd in ((sample.boxes, 0), (sample.ignore, 1)):
            for box in np.asarray(boxes, dtype=float).reshape(-1, 4):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(sample.image_id),
                        "category_id": PERSON_CATEGORY_ID,
                        "bbox": [round(float(v), 2) for v in box],
                        "area": round(float(box[2] * box[3]), 2),
                        "iscrowd": crowd,
                    }
                )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": PERSON_CATEGORY_ID, "name": "person"}],
    }


def _load_coco(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = {"info": {}, "licenses": [], **gt}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(gt: dict, detections: Sequence[dict], thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict:
    """Score COCO-format ``detections`` against the ``gt`` dict; fractions in [0, 1].

    Returns ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100`` (-1 where COCO has nothing to
    score, e.g. no small objects), ``num_images``, ``num_gt``, ``num_detections`` and
    ``at_threshold``: precision, recall and F1 at IoU 0.5 for each score threshold, and
    ``pr_curve_iou50``: COCO's interpolated precision-recall curve at IoU 0.5.
    """
    if not gt.get("images"):
        raise ValueError("ground truth: no images to evaluate")
    coco_gt = _load_coco(gt)
    num_gt = sum(1 for a in gt["annotations"] if a.get("category_id") == PERSON_CATEGORY_ID and not a.get("iscrowd", 0))
    result: dict = {"num_images": len(gt["images"]), "num_gt": num_gt, "num_detections": len(detections)}
    if not detections:
        result.update({k: 0.0 for k in METRIC_KEYS})
        result["at_threshold"] = {str(t): {"precision": 0.0, "recall": 0.0, "F1": 0.0} for t in thresholds}
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.catIds = [PERSON_CATEGORY_ID]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result.update({k: float(v) for k, v in zip(METRIC_KEYS, evaluator.stats[: len(METRIC_KEYS)])})
    result["at_threshold"] = _at_thresholds(evaluator, thresholds, num_gt)
    # interpolated precision at IoU 0.5 on COCO's 101 recall points (area "all", 100 detections)
    # COCOeval stores 0 precision at recall points the ranked list never reaches (and -1 with no
    # ground truth); both become None, so a plotted curve ends where the detections end.
    precision = evaluator.eval["precision"][0, :, 0, 0, -1]
    max_recall = float(evaluator.eval["recall"][0, 0, 0, -1])
    result["pr_curve_iou50"] = {
        "recall": [round(float(r), 2) for r in evaluator.params.recThrs],
        "precision": [
            float(p) if p >= 0 and r <= max_recall + 1e-9 else None for p, r in zip(precision, evaluator.params.recThrs)
        ],
    }
    return result


def _at_thresholds(evaluator: COCOeval, thresholds: Sequence[float], num_gt: int) -> dict:
    """Precision/recall/F1 at IoU 0.5 from COCOeval's own per-image matching (area 'all', 100 dets)."""
    iou_index = 0  # params.iouThrs[0] == 0.5
    scores, matched = [], []
    for entry in evaluator.evalImgs:
        if entry is None or entry["aRng"] != evaluator.params.areaRng[0]:
            continue
        keep = ~entry["dtIgnore"][iou_index].astype(bool)
        scores.append(np.asarray(entry["dtScores"])[keep])
        matched.append(entry["dtMatches"][iou_index][keep] > 0)
    scores_all = np.concatenate(scores) if scores else np.zeros(0)
    matched_all = np.concatenate(matched) if matched else np.zeros(0, dtype=bool)
    out = {}
    for t in thresholds:
        above = scores_all >= t
        tp = int((matched_all & above).sum())
        fp = int((~matched_all & above).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / num_gt if num_gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[str(t)] = {"precision": precision, "recall": recall, "F1": f1, "TP": tp, "FP": fp}
    return out
