"""Recommending an exit design from the ``designs`` comparison of ``evaluate-exits``. Pure: same result, same answer.

Within the user's tolerance (AP50 at least the full model's minus ``max_ap50_loss``, absolute: 0.01
is one AP50 point), the recommendation is the timed, non-bound setting with the lowest measured
median latency whose speed-up over the unmodified model is *measurable* (the per-round IQR of the
ratio excludes 1) and above 1. Where none is, the verdict is "not viable", with the best that was
found: the cheapest setting within tolerance (with what it measured), the fastest measured
setting outside it and how far its AP50 is from the tolerance, and the oracle's bound for the
same tolerance (what a perfect gate could save, labelled a bound).
"""

from __future__ import annotations

from probe_kit.models.timing import describe_speedup

VERDICTS = ("early exit pays", "not viable")


def design_name(d: dict) -> str:
    """``dense heads, blocks 5,6 fine-tuned`` or ``det heads, frozen``: a design entry's head type and backbone."""
    tuned = d["finetuned_blocks"]  # 0-based block indices; named 1-based, as layer k is block k's output
    blocks = f"blocks {','.join(str(i + 1) for i in tuned)} fine-tuned" if tuned else "frozen"
    return f"{d['head']} heads, {blocks}"


def setting_name(d: dict) -> str:
    """``dense heads, frozen, exit 6`` or ``det heads, frozen, learned at 0.3``: the design and its setting."""
    setting = f"exit {d['layer']}" if d["policy"] == "static" else f"{d['policy']} at {d['threshold']}"
    return f"{design_name(d)}, {setting}"


def _name(d: dict) -> str:
    return f"{setting_name(d)} ({d['exits_dir']})"


def _numbers(d: dict, full: dict) -> str:
    text = f"AP50 {d['AP50']:.3f} ({d['AP50'] - full['AP50']:+.3f}), {d['mean_gflops']:.3f} GFLOPs"
    if "measured_speedup" in d:
        text += f", measured: {describe_speedup(d['measured_speedup'])}"
    return text + f", FLOPs {d['flops_speedup']:.2f}x"


def recommend_design(result: dict, max_ap50_loss: float | None = None) -> dict:
    """The recommendation for ``result`` (an ``evaluate-exits`` result.json with ``designs``)."""
    if "designs" not in result:
        raise ValueError("--designs: expected an evaluate-exits result.json with a 'designs' list")
    tolerance = result.get("max_ap50_loss", 0.01) if max_ap50_loss is None else max_ap50_loss
    if not 0 <= tolerance < 1:
        raise ValueError(f"--max-ap50-loss: expected an AP50 difference in [0, 1), got {tolerance}")
    full, designs = result["full_model"], result["designs"]
    floor = full["AP50"] - tolerance
    real = [i for i, d in enumerate(designs) if not d["bound"]]
    within = [i for i in real if designs[i]["AP50"] >= floor]
    paying = [
        i
        for i in within
        if "measured_speedup" in designs[i]
        and designs[i]["measured_speedup"]["measurable"]
        and designs[i]["measured_speedup"]["ratio"] > 1
    ]
    rationale = [
        (
            f"full model: AP50 {full['AP50']:.3f}, {full['gflops']:.3f} GFLOPs, "
            f"{full['latency']['median_ms']:.2f} ms median (IQR {full['latency']['iqr_ms']:.2f}); tolerance: AP50 >= "
            f"{floor:.3f} (max loss {tolerance}); {len(real)} settings compared on "
            f"{len(result['scored_image_ids'])} held-out images"
        )
    ]
    if tolerance != result.get("max_ap50_loss", tolerance):
        rationale.append(
            f"latency was measured for the cheapest settings within {result['max_ap50_loss']} of the full AP50; with "
            f"{tolerance} only settings timed then are candidates"
        )
    chosen = None
    if paying:
        chosen = min(paying, key=lambda i: designs[i]["latency"]["median_ms"])
        verdict = VERDICTS[0]
        rationale.append(f"recommended: {_name(designs[chosen])}: {_numbers(designs[chosen], full)}")
    else:
        verdict = VERDICTS[1]
        depth = max((d["layer"] for d in designs if d["policy"] == "static"), default=None)
        others = [i for i in within if not (designs[i]["policy"] == "static" and designs[i]["layer"] == depth)]
        if others:  # the full model itself is always within: name the cheapest of the rest
            cheapest = min(others, key=lambda i: designs[i]["mean_gflops"])
            rationale.append(
                f"no setting within tolerance is measurably faster; the cheapest within it besides the full model: "
                f"{_name(designs[cheapest])}: {_numbers(designs[cheapest], full)}"
            )
        faster = [
            i
            for i in real
            if "measured_speedup" in designs[i]
            and designs[i]["measured_speedup"]["measurable"]
            and designs[i]["measured_speedup"]["ratio"] > 1
        ]
        if faster:
            best = max(faster, key=lambda i: designs[i]["AP50"])
            gap = floor - designs[best]["AP50"]
            rationale.append(
                f"most accurate measurably faster setting: {_name(designs[best])}: {_numbers(designs[best], full)}; "
                f"its AP50 is {gap:.3f} below the tolerance"
            )
    bounds = [i for i, d in enumerate(designs) if d["bound"] and d["AP50"] >= floor]
    if bounds:
        b = min(bounds, key=lambda i: designs[i]["mean_gflops"])
        rationale.append(
            f"oracle bound (not a result): a perfect gate for F1 cut {designs[b]['threshold']} would run "
            f"{designs[b]['mean_gflops']:.3f} GFLOPs ({designs[b]['flops_speedup']:.2f}x by FLOPs) at AP50 "
            f"{designs[b]['AP50']:.3f} ({designs[b]['exits_dir']})"
        )
    rationale.append(f"verdict: {verdict}")
    summary = (
        f"{_name(designs[chosen])}: {_numbers(designs[chosen], full)}"
        if chosen is not None
        else f"{verdict}: no setting within {tolerance} AP50 of the full model is measurably faster"
    )
    return {
        "verdict": verdict,
        "summary": summary,
        "max_ap50_loss": tolerance,
        "design": None if chosen is None else {"index": chosen, **designs[chosen]},
        "rationale": rationale,
    }
