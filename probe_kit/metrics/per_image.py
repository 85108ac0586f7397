"""COCO AP when every image takes its detections from one of several detection sets (an exit per image).

pycocotools' ``COCOeval.evaluate`` matches detections to ground truth per (category, area range,
image), independently for each image, and ``accumulate`` only gathers those per-image results.
So each set is evaluated once, and any per-image choice among the sets is scored by gathering the
chosen set's per-image results and accumulating: the numbers ``evaluate`` gives on the mixed
detections (tested), at the cost of one ``accumulate`` per choice instead of a full evaluation.
pycocotools has no API for this; the gathering below relies on its documented ``evalImgs`` order
(category, then area range, then image).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Hashable, Mapping, Sequence

from pycocotools.cocoeval import COCOeval

from probe_kit.metrics.coco import PERSON_CATEGORY_ID, _load_coco, summary


class PerImageChoice:
    """Score per-image choices among detection ``sets`` (each non-empty, COCO results format) against ``gt``."""

    def __init__(self, gt: dict, sets: Mapping[Hashable, Sequence[dict]]) -> None:
        coco_gt = _load_coco(gt)
        self._num_gt = sum(1 for a in gt["annotations"] if a["category_id"] == PERSON_CATEGORY_ID and not a["iscrowd"])
        self._evals: dict[Hashable, COCOeval] = {}
        with contextlib.redirect_stdout(io.StringIO()):
            for key, detections in sets.items():
                if not detections:
                    raise ValueError(f"detection set {key!r}: empty")
                evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in detections]), iouType="bbox")
                evaluator.params.catIds = [PERSON_CATEGORY_ID]
                evaluator.evaluate()
                self._evals[key] = evaluator
        self._first = next(iter(self._evals.values()))
        self.image_ids = list(self._first.params.imgIds)

    def score(self, choice: Mapping[int, Hashable], thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict:
        """``evaluate``'s metrics (AP, AP50, ..., ``at_threshold``, ``pr_curve_iou50``) when image ``i`` takes
        set ``choice[i]`` (every image id of the ground truth)."""
        missing = [i for i in self.image_ids if i not in choice]
        if missing:
            raise ValueError(f"per-image choice: no set chosen for images {missing[:5]}")
        images = len(self.image_ids)
        gathered = [
            self._evals[choice[self.image_ids[index % images]]].evalImgs[index]
            for index in range(len(self._first.evalImgs))
        ]
        evaluator = copy.copy(self._first)
        evaluator.evalImgs = gathered
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate()
            evaluator.summarize()
        return summary(evaluator, thresholds, self._num_gt)
