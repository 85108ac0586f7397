"""COCO evaluation over pycocotools: AP on the full ranked list, P/R/F1 at score thresholds.

AP never sees a confidence cut (cutting can only lower AP; see facts.md). Precision, recall
and F1 at chosen thresholds come from the same COCOeval matching at IoU 0.5, so they agree
with AP50 about which detections are true positives and which are ignored.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from probe_kit.data.checks import (
    InputError,
    is_integral,
    json_box,
    json_field,
    json_list,
    json_number,
    json_record,
    numeric_table,
    short,
)
from probe_kit.data.coco import check_coco
from probe_kit.data.sample import Sample

PERSON_CATEGORY_ID = 1
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def ground_truth_dict(samples: Iterable[Sample]) -> dict:
    """COCO ground-truth dict: persons with ``iscrowd: 0``, ignore regions with ``iscrowd: 1``."""
    images, annotations = [], []
    for sample in samples:
        for name in ("boxes", "ignore"):
            if not np.isfinite(np.asarray(getattr(sample, name), dtype=float)).all():
                raise InputError(f"sample {sample.file_name}: {name}", "finite numbers", "NaN or infinity")
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


def check_detections(detections: Any, image_ids: set[int], where: str = "detections") -> list[dict]:
    """COCO results as clean dicts ``{image_id, category_id, bbox, score}`` of Python numbers.

    Each entry needs an ``image_id`` of the ground truth, an integer ``category_id``, a ``bbox`` of
    four finite numbers (width, height >= 0) and a finite ``score``; else one line naming ``where[i]``.
    Other keys are dropped (pycocotools' ``loadRes`` would take a ``caption`` key as a captioning result).
    """
    fast = _fast_detections(json_list(detections, where), image_ids)
    if fast is not None:
        return fast
    out = []
    for i, value in enumerate(detections):
        at = f"{where}[{i}]"
        record = json_record(value, at)
        image_id = json_number(
            json_field(record, "image_id", f"{at}.image_id", "an integer"), f"{at}.image_id", integer=True
        )
        if image_id not in image_ids:
            raise InputError(f"{at}.image_id", "the id of an image in the ground truth", short(image_id))
        category = json_field(record, "category_id", f"{at}.category_id", "an integer")
        bbox = json_field(record, "bbox", f"{at}.bbox", "[x, y, width, height]")
        score = json_field(record, "score", f"{at}.score", "a finite number")
        out.append(
            {
                "image_id": image_id,
                "category_id": json_number(category, f"{at}.category_id", integer=True),
                "bbox": list(json_box(bbox, f"{at}.bbox")),
                "score": json_number(score, f"{at}.score"),
            }
        )
    return out


def _fast_detections(detections: list, image_ids: set[int]) -> list[dict] | None:
    """``check_detections`` for valid input in one vectorised pass (100k detections: ~0.2 s instead of ~1.5 s)."""
    try:
        rows = [(d["image_id"], d["category_id"], *d["bbox"], d["score"]) for d in detections]
    except (TypeError, KeyError):
        return None
    table = numeric_table(rows, 7)
    if table is None or not np.isfinite(table).all() or (table[:, 4:6] < 0).any():
        return None
    if not is_integral(table[:, :2]).all() or not {int(i) for i in table[:, 0]} <= image_ids:
        return None
    return [{"image_id": int(r[0]), "category_id": int(r[1]), "bbox": r[2:6], "score": r[6]} for r in table.tolist()]


def check_thresholds(thresholds: Sequence[float], where: str = "thresholds") -> tuple[float, ...]:
    """Score thresholds: at least one, each a finite number in [0, 1]."""
    values = tuple(json_number(t, where, lo=0, hi=1) for t in json_list(list(thresholds), where))
    if not values:
        raise InputError(where, "at least one score threshold", "none")
    return values


def evaluate(
    gt: dict,
    detections: Sequence[dict],
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    names: tuple[str, str] = ("ground truth", "detections"),
) -> dict:
    """Score COCO-format ``detections`` against the ``gt`` dict; fractions in [0, 1].

    Returns ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100`` (-1 where COCO has nothing to
    score, e.g. no small objects), ``num_images``, ``num_gt``, ``num_detections`` and
    ``at_threshold``: precision, recall and F1 at IoU 0.5 for each score threshold, and
    ``pr_curve_iou50``: COCO's interpolated precision-recall curve at IoU 0.5.
    Both inputs are validated first (``check_coco``, ``check_detections``); ``names`` say where
    they came from (file names) in the one-line errors.
    """
    gt = check_coco(gt, names[0])
    if not gt["images"]:
        raise InputError(f"{names[0]}: images", "at least one image to evaluate", "none")
    detections = check_detections(detections, {img["id"] for img in gt["images"]}, names[1])
    thresholds = check_thresholds(thresholds)
    coco_gt = _load_coco(gt)
    num_gt = sum(1 for a in gt["annotations"] if a["category_id"] == PERSON_CATEGORY_ID and not a["iscrowd"])
    result: dict = {"num_images": len(gt["images"]), "num_gt": num_gt, "num_detections": len(detections)}
    if not detections:
        result.update({k: 0.0 for k in METRIC_KEYS})
        result["at_threshold"] = {str(t): {"precision": 0.0, "recall": 0.0, "F1": 0.0} for t in thresholds}
        return result
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.catIds = [PERSON_CATEGORY_ID]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {**result, **summary(evaluator, thresholds, num_gt)}


def summary(evaluator: COCOeval, thresholds: Sequence[float], num_gt: int) -> dict:
    """``evaluate``'s metrics, ``at_threshold`` and ``pr_curve_iou50`` of an evaluated, accumulated, summarized
    COCOeval."""
    result = {k: float(v) for k, v in zip(METRIC_KEYS, evaluator.stats[: len(METRIC_KEYS)])}
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
