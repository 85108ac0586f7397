"""A speed-up the compute cannot explain is noise: the verdict of the design comparison under synthetic timings
and under a loaded machine (issue: a busy machine must not flip the verdict)."""

from __future__ import annotations

import multiprocessing
import re
import time

import numpy as np
import pytest

from probe_kit.decision.design import DesignRow, efficiency, judge, recommend_design
from probe_kit.models.timing import Latency, Rounds, bootstrap_ci, interleaved_latency, speedup


def _setting(flops_speedup: float, measured: dict | None, policy="confidence", layer=None, ap50=0.8) -> dict:
    d = {
        "exits_dir": "/x",
        "head": "det",
        "finetuned_blocks": [],
        "policy": policy,
        "threshold": None if policy == "static" else 0.5,
        "layer": layer,
        "AP50": ap50,
        "mean_gflops": 1.0 / flops_speedup,
        "flops_speedup": flops_speedup,
        "bound": False,
    }
    if measured is not None:
        measured = {"round_ratio_iqr": measured["ci95"], "measurable": measured["ci95"][0] > 1, **measured}
        d["measured_speedup"], d["latency"] = measured, {"median_ms": 10 / measured["ratio"], "iqr_ms": 1.0}
    return d


def _result(settings: list[dict]) -> dict:
    full = _setting(1.0, None, policy="static", layer=12)
    latency = {"median_ms": 10.0, "iqr_ms": 1.0, "repeats": 15}
    return {
        "scored_image_ids": [1, 2, 3],
        "full_model": {"AP50": 0.8, "gflops": 1.0, "latency": latency},
        "max_ap50_loss": 0.01,
        "designs": [full, *settings],
    }


def _measured(full_ms: np.ndarray, setting_ms: np.ndarray) -> dict:
    return speedup(Latency(tuple(full_ms)), Latency(tuple(setting_ms)))


def test_a_setting_that_does_no_less_work_is_never_recommended_whatever_its_timing():
    fast = {"ratio": 1.6, "round_ratio_iqr": [1.5, 1.7], "ci95": [1.45, 1.75], "measurable": True}
    for flops in (0.95, 0.99, 1.0, 1.01):
        rec = recommend_design(_result([_setting(flops, fast)]))
        assert rec["verdict"] == "not viable" and rec["design"] is None
        assert rec["judgements"]["1"] == "saves no compute"


def test_a_measured_speedup_beyond_what_the_flops_explain_is_inconsistent_and_carries_no_verdict():
    # FLOPs say 1.2x; measured 1.6-1.8x with no static exit showing this machine beats its FLOPs
    rec = recommend_design(_result([_setting(1.2, {"ratio": 1.7, "round_ratio_iqr": [1.6, 1.8], "ci95": [1.6, 1.8]})]))
    assert rec["judgements"]["1"] == "timing inconsistent with compute" and rec["verdict"] == "inconclusive"
    assert rec["design"] is None and "exceeds what its compute explains (FLOPs 1.20x)" in rec["summary"]
    assert any(line.startswith("timing inconsistent with compute:") for line in rec["rationale"])
    # the same measurement is consistent where a static exit measured 1.5x its FLOPs in the same run
    static = _setting(1.5, {"ratio": 2.25, "round_ratio_iqr": [2.2, 2.3], "ci95": [2.2, 2.3]}, "static", 6, 0.5)
    rows = [DesignRow.from_json(d, "test") for d in (static, _setting(1.2, {"ratio": 1.7, "ci95": [1.6, 1.8]}))]
    assert efficiency(rows[:1]) == pytest.approx(1.5)
    assert judge(rows[1], 1.1, efficiency(rows[:1])) == "pays"


def test_ratios_scattered_around_one_are_inconclusive_never_pays():
    rng = np.random.default_rng(3)
    for trial in range(20):
        full = 10 * rng.lognormal(0, 0.25, 9)
        setting = 10 * rng.lognormal(0, 0.25, 9)  # the same work: ratios scatter around 1
        measured = _measured(full, setting)
        verdict = recommend_design(_result([_setting(1.5, measured)]))["verdict"]
        assert verdict in ("inconclusive", "not viable"), (trial, measured)
    wide = _measured(10 * rng.lognormal(0, 0.4, 5), 10 * rng.lognormal(0, 0.4, 5) / 1.2)
    rec = recommend_design(_result([_setting(1.5, wide)]))
    if rec["verdict"] == "inconclusive":
        assert rec["summary"].startswith("inconclusive: timing spread") and "--timing-repeats" in rec["summary"]


def test_the_interval_is_the_same_for_the_same_seed_and_holds_the_ratio():
    rng = np.random.default_rng(0)
    full, setting = Latency(tuple(10 + rng.normal(0, 1, 15))), Latency(tuple(5 + rng.normal(0, 0.5, 15)))
    assert bootstrap_ci(full, setting, seed=4) == bootstrap_ci(full, setting, seed=4)
    low, high = bootstrap_ci(full, setting)
    assert low < full.median_ms / setting.median_ms < high and 1.5 < low and high < 2.6


def test_min_speedup_is_the_bar_the_interval_must_clear():
    measured = {"ratio": 1.25, "round_ratio_iqr": [1.2, 1.3], "ci95": [1.15, 1.35]}
    assert recommend_design(_result([_setting(2.0, measured)]), min_speedup=1.10)["verdict"] == "early exit pays"
    assert recommend_design(_result([_setting(2.0, measured)]), min_speedup=1.20)["verdict"] == "inconclusive"
    assert recommend_design(_result([_setting(2.0, measured)]), min_speedup=1.50)["verdict"] == "not viable"
    with pytest.raises(ValueError, match="--min-speedup"):
        recommend_design(_result([_setting(2.0, measured)]), min_speedup=0.5)


def _work(repeats: int):
    import torch

    a = torch.randn(192, 192, generator=torch.Generator().manual_seed(0))

    def run() -> None:
        x = a
        for _ in range(repeats):
            x = torch.tanh(x @ a)

    return run


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _verdict() -> str:
    """Time a full workload, half of it (FLOPs 2x) and the same again (FLOPs 1x); judge them as designs."""
    run = interleaved_latency(
        {"full": _work(16), "half": _work(8), "same": _work(16)},
        images=1,
        rounds=Rounds(minimum=7, maximum=40, seconds=8.0, width=0.10, seed=1),
        warmup=2,
    )
    half, same = (speedup(run.latency["full"], run.latency[k]) for k in ("half", "same"))
    rec = recommend_design(_result([_setting(2.0, half), _setting(1.0, same)]))
    return rec["verdict"], rec["judgements"], half["ci95"], run.conditions


def test_two_spinning_processes_beside_the_timing_never_flip_the_verdict():
    quiet = _verdict()
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(2)]
    for p in spinners:
        p.start()
    try:
        time.sleep(0.2)
        loaded = _verdict()
    finally:
        stop.set()
        for p in spinners:
            p.join(5)
    assert quiet[0] in ("early exit pays", "inconclusive"), quiet
    assert loaded[0] in (quiet[0], "inconclusive"), (quiet, loaded)
    assert loaded[1]["2"] == quiet[1]["2"] == "saves no compute"  # the same work never pays, whatever the load


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("AP50", 7.0, "designs[1]: AP50: expected a finite number in [0, 1], got 7.0"),
        ("AP50", float("nan"), "designs[1]: AP50: expected a finite number in [0, 1], got nan"),
        ("mean_gflops", float("inf"), "designs[1]: mean_gflops: expected a finite number, got inf"),
        ("measured_speedup", {"ratio": float("nan"), "ci95": [1.0, 1.2]}, "designs[1]: measured_speedup: expected"),
    ],
)
def test_a_damaged_design_row_is_refused_naming_it(field, value, message):
    row = _setting(2.0, {"ratio": 1.5, "ci95": [1.4, 1.6]})
    row[field] = value
    with pytest.raises(ValueError, match=re.escape(f"--designs: {message}")):
        recommend_design(_result([row]))
    if field != "measured_speedup":  # required fields; an untimed row has no measured_speedup
        del row[field]
        with pytest.raises(ValueError, match=re.escape(f"--designs: designs[1]: no {field!r}")):
            recommend_design(_result([row]))
