"""The oracle exit: for each image, the earliest exit meeting the gate's target. A bound, never a result.

It looks at every exit of an image, the final layer included, so no deployable policy can make
its choices; what it shows is the least compute with which every scored image meets the target
(``gate.meets_target``: F1 at IoU 0.5 of the kept detections against the final layer's >= the cut),
i.e. how far a perfect gate for that target could go. Its threshold is the F1 cut. Costs per exit
grow with depth, so the earliest exit meeting the target is also the cheapest, image by image, and
the total is a sum over images: the per-image choice is the global optimum (a test checks this
against a brute-force search).
"""

from __future__ import annotations

import numpy as np
import torch

from probe_kit.heads.gate import meets_target
from probe_kit.heads.records import ExitRecords

BOUND_LABEL = "oracle (bound, not a result)"


def earliest_meeting(met: np.ndarray) -> np.ndarray:
    """[I, E] bool (last column all True) -> [I] index of the first exit meeting the target."""
    met = np.asarray(met, dtype=bool)
    if met.ndim != 2 or not met[:, -1].all():
        raise ValueError("oracle: expected [images, exits] booleans whose last exit (the final layer) always meets")
    return met.argmax(1)


def oracle_policy(records: ExitRecords, cut: float) -> torch.Tensor:
    """PolicyFn: [I] long, each image's earliest exit meeting ``meets_target(records, cut)``."""
    slots = earliest_meeting(meets_target(records, cut))
    return torch.tensor([records.layers[j] for j in slots], dtype=torch.long)
