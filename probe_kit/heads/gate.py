"""Learned exit gates (BERxiT / learning-to-exit style): may this image leave at this exit?

**Target.** Exit ``k`` is good enough for an image when its kept detections (person score >=
``KEEP_SCORE``) agree with the final layer's kept detections: F1 at IoU ``TARGET_IOU`` (0.5)
>= ``cut`` (default ``TARGET_F1`` = 0.9), where the matches are a maximum one-to-one matching of
pairs with IoU >= 0.5 (scipy's Hungarian solver) and F1 = 2 matches / (kept here + kept at the
final layer); two empty sets agree (F1 = 1). The final layer meets the target by definition. The
target asks "does the image lose nothing it would have got from the full model", not "is it
right", so it needs no ground truth and the same definition serves the ``oracle`` bound.

**Features** (``gate_features``), all from the exit's own outputs, nothing later: the exit's
``TOP_SCORES`` highest person scores, how many detections it keeps, how many are undecided
(0.1 < p < 0.9), the sum of its scores, and the mean of the tokens its head read (``pooled``).

**Classifier.** Per intermediate exit, scikit-learn's ``LogisticRegression`` (C = ``GATE_C``) on
standardised features, trained on *training images only* (the caller passes their records),
then copied into tensors so it runs inside ``MultiExitYolos``. (The heads also trained on those
images, so exits look better there than on new images: a gate learns a slightly optimistic target;
the scored numbers, on images that trained nothing, show what that costs.) Where the training images hold only
one answer for an exit (every image meets the target there, or none does), the gate is that
constant. A gate's probability >= the swept threshold lets the image leave.

**Cost** (``gate_gflops``), counted analytically because FlopCounterMode counts matrix products
only: pooling (N x D adds), the score statistics (4 N) and the standardised linear map (4 F), per
exit evaluated; it is added to the GFLOPs of every ``learned`` setting, and the live model runs
the gate, so measured latency includes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from probe_kit.heads.policies import OnlineRule
from probe_kit.heads.records import KEEP_SCORE, ExitRecords, ExitStats
from probe_kit.ops.matching import iou_matrix

TARGET_IOU = 0.5
TARGET_F1 = 0.9
TOP_SCORES = 5
GATE_C = 0.1  # L2 strength: few training images, a few hundred features


def agreement_f1(scores: np.ndarray, boxes: np.ndarray, final_scores: np.ndarray, final_boxes: np.ndarray) -> float:
    """F1 at IoU ``TARGET_IOU`` of one image's kept detections against the final layer's kept ones.

    ``scores [N]``, ``boxes [N, 4]`` normalised cx, cy, w, h (likewise for the final layer).
    """
    mine, theirs = boxes[scores >= KEEP_SCORE], final_boxes[final_scores >= KEEP_SCORE]
    if len(mine) + len(theirs) == 0:
        return 1.0
    if len(mine) == 0 or len(theirs) == 0:
        return 0.0
    corner = lambda b: np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], axis=1)  # -> x, y, w, h
    hit = (iou_matrix(corner(mine), corner(theirs)) >= TARGET_IOU).astype(np.float64)
    rows, cols = linear_sum_assignment(-hit)
    matches = hit[rows, cols].sum()
    return float(2 * matches / (len(mine) + len(theirs)))


def agreement(records: ExitRecords) -> np.ndarray:
    """[I, E] F1 of every image's kept detections at every exit against the final layer's (last column = 1)."""
    final = records.stats[records.layers[-1]]
    out = np.ones((len(records), len(records.layers)))
    for j, layer in enumerate(records.layers[:-1]):
        stats = records.stats[layer]
        person, boxes = stats.person.numpy(), stats.boxes.numpy()
        for i in range(len(records)):
            out[i, j] = agreement_f1(person[i], boxes[i], final.person[i].numpy(), final.boxes[i].numpy())
    return out


def meets_target(records: ExitRecords, cut: float = TARGET_F1) -> np.ndarray:
    """[I, E] bool: exit j is good enough for image i (see the module docstring); the last exit always is."""
    met = agreement(records) >= cut
    met[:, -1] = True
    return met


def gate_features(stats: ExitStats) -> torch.Tensor:
    """[B, F] cheap features of one exit's outputs (F = TOP_SCORES + 3 + D)."""
    person = stats.person.float()
    top = person.sort(-1, descending=True).values[:, :TOP_SCORES]
    top = nn.functional.pad(top, (0, TOP_SCORES - top.shape[1]))
    kept = (person >= KEEP_SCORE).sum(-1, keepdim=True).float()
    undecided = ((person > 0.1) & (person < 0.9)).sum(-1, keepdim=True).float()
    return torch.cat([top, kept, undecided, person.sum(-1, keepdim=True), stats.pooled.float()], dim=-1)


class ExitGates(nn.Module):
    """One standardised logistic gate per intermediate exit: ``prob(j, stats) -> [B]``."""

    def __init__(self, layers: Sequence[int], num_features: int) -> None:
        super().__init__()
        self.layers = tuple(layers)  # intermediate exits, ascending
        e = len(self.layers)
        self.register_buffer("mean", torch.zeros(e, num_features))
        self.register_buffer("scale", torch.ones(e, num_features))
        self.register_buffer("weight", torch.zeros(e, num_features))
        self.register_buffer("bias", torch.zeros(e))

    def prob(self, j: int, stats: ExitStats) -> torch.Tensor:
        """[B] probability that exit ``self.layers[j]`` already meets the target for each image."""
        x = (gate_features(stats) - self.mean[j]) / self.scale[j]
        return torch.sigmoid(x @ self.weight[j] + self.bias[j])

    def rule(self) -> OnlineRule:
        """The online rule of the ``learned`` policy: leave when the current exit's gate reaches the threshold."""

        def learned(history: Sequence[ExitStats], threshold: float) -> torch.Tensor:
            return self.prob(len(history) - 1, history[-1]) >= threshold

        return learned


def train_gates(records: ExitRecords, cut: float = TARGET_F1, seed: int = 0) -> tuple[ExitGates, dict]:
    """Gates for every exit but the last, fitted on ``records`` (training images only; the caller's duty).

    Returns the gates and a summary per exit (training images, share meeting the target, training accuracy).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    met = meets_target(records, cut)
    layers = records.layers[:-1]
    features = {k: gate_features(records.stats[k]).numpy().astype(np.float64) for k in layers}
    gates = ExitGates(layers, next(iter(features.values())).shape[1] if layers else 0)
    summary = {}
    for j, layer in enumerate(layers):
        x, y = features[layer], met[:, j]
        if y.all() or not y.any():  # one answer only: a constant gate
            gates.bias[j] = 30.0 if y.all() else -30.0
            accuracy = 1.0
        else:
            scaler = StandardScaler().fit(x)
            model = LogisticRegression(C=GATE_C, max_iter=2000, random_state=seed).fit(scaler.transform(x), y)
            gates.mean[j] = torch.from_numpy(scaler.mean_).float()
            gates.scale[j] = torch.from_numpy(np.where(scaler.scale_ > 0, scaler.scale_, 1.0)).float()
            gates.weight[j] = torch.from_numpy(model.coef_[0]).float()
            gates.bias[j] = float(model.intercept_[0])
            accuracy = float(model.score(scaler.transform(x), y))
        summary[str(layer)] = {"images": len(y), "meets_target": float(y.mean()), "train_accuracy": accuracy}
    return gates, summary


def gate_gflops(num_tokens: int, hidden: int) -> float:
    """GFLOPs of one gate: pooling ``num_tokens x hidden`` adds, score statistics, standardised linear map."""
    features = TOP_SCORES + 3 + hidden
    return (num_tokens * hidden + 4 * num_tokens + 4 * features) / 1e9
