"""Behaviour kept across the heads/ redesign: the same exits training gives the same AP50 per exit and per
policy setting as the code before it (``tests/data/heads_regression.json``, recorded from commit 09fb073).

The reference model over 64 synthetic frames: det and dense exit heads at layers 4 and 8 (frozen backbone,
seed 0), ``evaluate-exits`` (confidence sweep) and the design comparison (all four built-in policies).
AP50 agrees within ``RECORDED_AP50_TOLERANCE``: training on another CPU or thread count sums in another
order (see docs/cache-format.md, "Equivalent caches"), which may move a near-tie in the ranked list.
Run this file as a script to print the numbers of the current code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

RECORDED = Path(__file__).parent / "data" / "heads_regression.json"
RECORDED_AP50_TOLERANCE = 0.005
THRESHOLDS = {"confidence": (0.6, 0.9), "patience": (0.5, 0.9), "learned": (0.5, 0.9), "oracle": (0.8, 0.95)}


def current_numbers(folder: Path) -> dict:
    """AP50 per exit and per policy setting of the det and dense designs trained and scored in ``folder``."""
    from probe_kit.cache.writer import write_cache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.data.synth import write_synth_dataset
    from probe_kit.heads.designs import compare_designs
    from probe_kit.heads.evaluate import evaluate_exits
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.pipeline import Timing
    from probe_kit.heads.training import train_exits
    from probe_kit.models.loading import ModelSpec

    write_synth_dataset(folder / "scenes", frames=64, seed=11, frames_per_sequence=16, progress=False)
    data = parse_data_spec(f"synth:{folder / 'scenes'}")
    cache = write_cache(ModelSpec("reference"), data, "4,8,12", ["det", "patch"], folder / "c.h5", progress=False)
    opts = ExitTraining(epochs=8, val_fraction=0.25)
    det = train_exits(cache, (4, 8), folder / "det", "det", seed=0, opts=opts, progress=False)
    dense = train_exits(cache, (4, 8), folder / "dense", "dense", seed=0, opts=opts, progress=False)
    timing = Timing(images=1, repeats=3)
    single = evaluate_exits(det, data, (0.6, 0.9), progress=False, timing=timing)
    designs = compare_designs([det, dense], data, tuple(THRESHOLDS), THRESHOLDS, timing=timing, progress=False)
    return {
        "scored_image_ids": designs["scored_image_ids"],
        "evaluate_exits": {
            "exits": {k: v["AP50"] for k, v in single["exits"].items()},
            "sweep": {str(s["threshold"]): s["AP50"] for s in single["sweep"]},
        },
        "designs": {_setting_key(d): {"AP50": d["AP50"], "exits": d["exit_histogram"]} for d in designs["designs"]},
    }


def _setting_key(design: dict) -> str:
    policy = "oracle" if design["bound"] else design["policy"]
    where = design["layer"] if policy == "static" else design["threshold"]
    return f"{design['head']} {policy} {where}"


def test_the_redesign_keeps_ap50_per_exit_and_per_policy_setting(tmp_path):
    recorded, now = json.loads(RECORDED.read_text()), current_numbers(tmp_path)
    assert now["scored_image_ids"] == recorded["scored_image_ids"]
    assert now["evaluate_exits"]["exits"].keys() == recorded["evaluate_exits"]["exits"].keys()
    assert now["designs"].keys() == recorded["designs"].keys()
    pairs = [
        (f"exit {k}", v, now["evaluate_exits"]["exits"][k]) for k, v in recorded["evaluate_exits"]["exits"].items()
    ]
    pairs += [
        (f"sweep {k}", v, now["evaluate_exits"]["sweep"][k]) for k, v in recorded["evaluate_exits"]["sweep"].items()
    ]
    pairs += [(key, v["AP50"], now["designs"][key]["AP50"]) for key, v in recorded["designs"].items()]
    assert max(v for _, v, _ in pairs) > 0.2  # a model that detects, so a changed head or policy would show
    for name, want, got in pairs:
        assert got == pytest.approx(want, abs=RECORDED_AP50_TOLERANCE), name


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        json.dump(current_numbers(Path(work)), sys.stdout, indent=1, sort_keys=True)
