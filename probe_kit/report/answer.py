"""The report's first screen: the verdict in words, one row per exit considered, and computed alerts.

Numbers follow one convention: scores (AP, AP50, masses, accuracies) are fractions 0-1 with three
decimals; shares of something (of the final layer's AP50, GFLOPs or latency saved) are percentages.
"""

from __future__ import annotations

from typing import Any

from probe_kit.models.timing import busy_load, describe_conditions
from probe_kit.report.collect import ReportData

UNDERFIT_RATIO = 0.5  # a trained readout below half the lens at the last layer has not learned the model's head
MIN_PERSONS = 100  # fewer validation persons than this and AP50 moves by several points per person
SAVES_NOTHING = 0.99  # an operating point at or above this share of the full GFLOPs saves nothing


def latency(entry: dict | None) -> tuple[float, float | None] | None:
    """(median ms, IQR ms or None) of a result row: ``latency`` {median_ms, iqr_ms} or an older ``mean_latency_ms``."""
    if not entry:
        return None
    if isinstance(entry.get("latency"), dict):
        return entry["latency"]["median_ms"], entry["latency"].get("iqr_ms")
    if entry.get("mean_latency_ms") is not None:
        return entry["mean_latency_ms"], None
    return None


def speedup(entry: dict | None) -> tuple[float, bool | None] | None:
    """(ratio of medians, measurable or None where unknown) of a row's ``measured_speedup``."""
    value = (entry or {}).get("measured_speedup")
    if isinstance(value, dict):
        return value["ratio"], value.get("measurable")
    return (value, None) if value is not None else None


def considered_exits(data: ReportData) -> list[int]:
    """Exits the study looked at: trained exit heads, the decision's exits, the user's bar layers, or else the
    original study's 25/50/75% depths; always the final layer, only layers a readout measured."""
    depth = data.depth
    measured = {k for k in data.layers if data.best_readout(k)}
    layers: set[int] = set()
    if data.exits_eval:
        layers |= {int(k) for k in data.exits_eval.get("exits", {})}
    if data.decision:
        layers |= set(data.decision.get("exits", []))
        layers |= {int(k) for k, _ in data.decision.get("criteria", {}).get("bars", [])}
    if depth and len(layers - {depth}) == 0:
        layers |= {max(1, round(depth * f)) for f in (0.25, 0.5, 0.75)}
    if depth:
        layers.add(depth)
    chosen = sorted(k for k in layers if k in measured or (data.exits_eval and str(k) in data.exits_eval["exits"]))
    return chosen or sorted(measured)


def _row(data: ReportData, layer: int, final: float | None) -> dict[str, Any]:
    depth = data.depth
    best = data.best_readout(layer)
    evidence = ((data.decision or {}).get("evidence") or {}).get(str(layer), {})
    bar = evidence.get("bar_AP50")
    if bar is None and evidence.get("required_relative_AP50") is not None and final:
        bar = evidence["required_relative_AP50"] * final  # decisions written before absolute bars were recorded
    cost = next((data.value(n, layer, "fraction_of_full") for n in data.by_role("cost")), None)
    exit_row = (data.exits_eval or {}).get("exits", {}).get(str(layer))
    full = (data.exits_eval or {}).get("full_model")
    if cost is None and exit_row and full:
        cost = exit_row["mean_gflops"] / full["gflops"]
    return {
        "layer": layer,
        "final": layer == depth,
        "readout": best[0] if best else None,
        "AP50": best[1] if best else None,
        "of_final": best[1] / final if best and final else None,
        "bar": None if layer == depth else bar,
        "passes": None if layer == depth else evidence.get("passes"),
        "exit_AP50": exit_row["AP50"] if exit_row else None,
        "gflops_saved": None if cost is None else 1 - cost,
        # The last layer is the full model: one latency for it, the full model's, not its static exit's second timing.
        "latency": latency(full if layer == depth and full else exit_row),
    }


def _final_ap50(data: ReportData) -> float | None:
    depth = data.depth
    if depth is None:
        return None
    reference = data.reference_readout()
    own = data.value(reference, depth, "AP50") if reference else None
    best = data.best_readout(depth)
    return own if own is not None else (best[1] if best else None)


def _measured_sentence(data: ReportData) -> str | None:
    ev = data.exits_eval
    if not ev or not ev.get("operating_point"):
        return None
    op, full = ev["operating_point"], ev["full_model"]
    gflops_saved = 1 - op["mean_gflops"] / full["gflops"]
    delta = op["AP50"] - full["AP50"]
    compute = (
        f"saves {gflops_saved:.0%} of the GFLOPs" if gflops_saved >= 0 else f"costs {-gflops_saved:.0%} more GFLOPs"
    )
    text = (
        f"Measured on held-out images: the {ev.get('policy', 'adaptive')} policy at threshold {op['threshold']} "
        f"reads AP50 {op['AP50']:.3f} ({delta:+.3f} against the full model's {full['AP50']:.3f}) and {compute}"
    )
    ratio = speedup(op)
    if ratio is None:
        return text + "."
    if ratio[1] is False:
        return text + f"; its latency differs from the full model's by no measurable amount ({ratio[0]:.2f}x)."
    saved = 1 - 1 / ratio[0]
    latency_text = f"saves {saved:.0%} of" if saved >= 0 else f"adds {1 / ratio[0] - 1:.0%} to"
    return text + f"; it {latency_text} the measured latency ({ratio[0]:.2f}x)."


def _design(decision: dict | None) -> str | None:
    """The design recommendation of decision.json (``decide --designs``: ``design`` {"verdict", ...}), if any."""
    design = (decision or {}).get("design")
    if isinstance(design, dict):
        return design.get("summary") or design.get("verdict")
    return design or None


def _budget(decision: dict | None) -> str | None:
    """Whether more training could change the design verdict (``decision.budget``), if the study trained live."""
    design = (decision or {}).get("design")
    return design.get("budget_card", design.get("budget")) if isinstance(design, dict) else None


def _baselines(decision: dict | None) -> list[str]:
    """Each baseline beside the best exit setting as fast (``decision.design.baselines``), if compared."""
    design = (decision or {}).get("design")
    return [b["card"] for b in design.get("baselines", [])] if isinstance(design, dict) else []


def answer(data: ReportData) -> dict[str, Any]:
    """The answer card: ``sentence`` (the verdict in words), ``measured``, ``design``, ``rows``, ``full``."""
    final = _final_ap50(data)
    decision = data.decision or {}
    sentence = decision.get("summary") or (
        f"{decision['verdict']}: exits {', '.join(map(str, decision['exits']))}" if decision else None
    )
    full = (data.exits_eval or {}).get("full_model")
    trained = sorted(int(k) for k in ((data.exits_eval or {}).get("exits") or {}))
    candidates = None
    if trained and decision and trained != sorted(decision.get("exits", [])):
        candidates = (
            f"Exit heads were trained at the candidate layers {', '.join(map(str, trained))} to measure what heads "
            "reach there; they are not the decision's recommendation."
        )
    return {
        "sentence": sentence,
        "candidates": candidates,
        "measured": _measured_sentence(data),
        "design": _design(data.decision),
        "budget": _budget(data.decision),
        "baselines": _baselines(data.decision),
        "timing": [
            line
            for line in (
                _timing_line("Exit latencies", data.exits_eval),
                _timing_line("Design latencies", data.designs),
            )
            if line
        ],
        "rows": [_row(data, k, final) for k in considered_exits(data)],
        "full_latency": latency(full),
        "final_AP50": final,
    }


def _timing_line(what: str, result: dict | None) -> str | None:
    """Where and how a result's latencies were measured, for the line beside them."""
    conditions = describe_conditions((result or {}).get("timing") or {}, why_stopped=False)  # the card: short
    return f"{what} {conditions}." if conditions else None


def busy_machine(result: dict | None) -> str | None:
    """A warning where the 1-minute load average exceeded the cores while timing ``result``."""
    timing = (result or {}).get("timing") or {}
    busy = busy_load(timing)
    if busy is None:
        return None
    return (
        f"The machine was busy while timing (load average {busy:.1f} on {timing['cores']} cores): latencies and "
        "speed-ups are noisier than on a quiet machine; rerun there before acting on them."
    )


def _trained(result: dict) -> bool:
    return bool(result.get("training"))


def alerts(data: ReportData) -> list[str]:
    """Warnings computed from the results: each names the numbers that raised it."""
    found = []
    ev = data.exits_eval
    trained_on = set(((data.exits_config or {}).get("split") or {}).get("train_image_ids", []))
    overlap = trained_on & set((ev or {}).get("scored_image_ids", []))
    if overlap or (ev and ev.get("evaluated_on") == "all images" and "dropped_training_images" not in ev):
        found.append(
            f"Exit heads were scored on images they trained on ({len(overlap) or 'all'} of them): their AP50 "
            "overstates what they reach on new images."
        )
    for name in data.by_role("readout"):
        split = data.results[name].get("split") or {}
        overlap = set(split.get("val_image_ids", [])) & set(split.get("train_image_ids", []))
        if overlap:
            found.append(f"{name} was scored on {len(overlap)} images it trained on.")
    depth = data.depth
    reference = data.reference_readout()
    own = data.value(reference, depth, "AP50") if depth and reference else None
    for name in data.by_role("readout"):
        value = data.value(name, depth, "AP50") if depth else None
        if own and value is not None and _trained(data.results[name]) and value < UNDERFIT_RATIO * own:
            found.append(
                f"{name} is underfit: AP50 {value:.3f} at the last layer {depth}, where {reference} (the model's own "
                f"head) reads {own:.3f}; its earlier layers understate what they hold."
            )
    if ev and ev.get("operating_point"):
        op, full = ev["operating_point"], ev["full_model"]
        if op["mean_gflops"] >= SAVES_NOTHING * full["gflops"]:
            found.append(
                f"The operating point (threshold {op['threshold']}) saves nothing: {op['mean_gflops']:.3f} of "
                f"{full['gflops']:.3f} GFLOPs per image."
            )
        last = max((int(k) for k in ev.get("exits", {})), default=None)  # the last exit is the full model itself
        noisy = [
            f"exit {k}"
            for k, row in ev.get("exits", {}).items()
            if int(k) != last and (speedup(row) or (0, True))[1] is False
        ] + (["the operating point"] if (speedup(op) or (0, True))[1] is False else [])
        if noisy:
            found.append(f"Latency differences within noise (per-round speed-up range holds 1x): {', '.join(noisy)}.")
        elif ev.get("exits") and all(latency(r) and latency(r)[1] is None for r in ev["exits"].values()):
            found.append("Latency was recorded as a mean without spread: differences of a few percent may be noise.")
    for warning in (busy_machine(data.exits_eval), busy_machine(data.designs)):
        if warning and warning not in found:
            found.append(warning)
    if data.val_persons is not None and data.val_persons < MIN_PERSONS:
        found.append(
            f"The validation images hold only {data.val_persons} persons (fewer than ~{MIN_PERSONS}): one person "
            f"more or less found moves AP50 by about {1 / max(data.val_persons, 1):.0%}."
        )
    return found
