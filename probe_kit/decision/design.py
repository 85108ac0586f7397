"""Recommending an exit design from the ``designs`` comparison of ``evaluate-exits``. Pure: same result, same answer.

A setting is a candidate when it is within the user's tolerance (AP50 at least the full model's minus
``max_ap50_loss``, absolute: 0.01 is one AP50 point), is not a bound, and was timed. Each candidate is
then judged in this order (``judge``):

1. **Plausible?** A setting can only save time by doing less work: its FLOPs speed-up must exceed 1 by
   ``FLOPS_MARGIN``, else it "saves no compute", whatever its timing.
2. **Can it reach the bar?** Not when even its FLOPs speed-up times the machine's efficiency in the
   same run (``efficiency``: the best measured/FLOPs ratio of the static exits timed beside it, at
   least 1) stays below ``min_speedup`` (a minimum worthwhile speed-up, default 1.10x): "does not pay".
3. **Consistent?** A measured speed-up the compute cannot explain, i.e. whose 95% interval lies wholly
   above that FLOPs speed-up times the efficiency, with ``CONSISTENCY_SLACK`` to spare, is "timing
   inconsistent with compute": noise or a broken measurement, so it counts as inconclusive, never "pays".
4. **Worth it?** "pays" when the interval's lower end clears ``min_speedup``; "does not pay" when its
   upper end is below it; otherwise "inconclusive": the timing is too noisy to tell.

Verdict: "early exit pays" (the paying setting with the lowest median latency) if any pays, else
"inconclusive" if any candidate is inconclusive or inconsistent, else "not viable", each with the numbers.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

import numpy as np

from probe_kit.decision.budget import budget_line
from probe_kit.decision.names import tuned_blocks_text
from probe_kit.models.timing import busy_load, describe_conditions, describe_speedup

VERDICTS = ("early exit pays", "not viable", "inconclusive")
FLOPS_MARGIN = 0.02  # a FLOPs speed-up of at most 1.02x does no measurably less work
CONSISTENCY_SLACK = 1.25  # static exits measured 0.79-0.99 of their FLOPs speed-up: 25% above it is not compute
MIN_SPEEDUP = 1.10
JUDGEMENTS = (
    "pays",
    "does not pay",
    "inconclusive",
    "saves no compute",
    "timing inconsistent with compute",
    "beaten by a baseline",
)


@dataclass(frozen=True)
class DesignRow:
    """One setting of a design comparison (a row of ``designs`` in an evaluate-exits result.json), validated on
    read: every reader of the comparison uses these attributes, never the raw keys."""

    exits_dir: str
    head: str
    finetuned_blocks: tuple[int, ...]
    policy: str
    threshold: float | None
    layer: int | None
    AP50: float  # noqa: N815 (the COCO name, as in result.json)
    mean_gflops: float
    flops_speedup: float
    bound: bool
    latency: dict | None = None
    measured_speedup: dict | None = None
    regime: str | None = None  # frozen, finetune or joint (None: written before regimes)
    det_tokens: int | None = None  # exits before the last on this many detection tokens (None: all)

    @classmethod
    def from_json(cls, data: object, where: str) -> DesignRow:
        """From a result row; a missing or non-finite field, or an AP50 outside [0, 1], is refused naming it."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a design setting (a JSON object)")  # noqa: TRY004 (user input)
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise ValueError(f"{where}: no {missing[0]!r}; not a row of an evaluate-exits design comparison")
        for key, low in (("AP50", 0.0), ("mean_gflops", 1e-12), ("flops_speedup", 1e-12)):
            if not _finite(data[key]) or data[key] < low or (key == "AP50" and data[key] > 1):
                raise ValueError(
                    f"{where}: {key}: expected a finite number{' in [0, 1]' if key == 'AP50' else ''}, "
                    f"got {data[key]!r}"
                )
        if not isinstance(data["bound"], bool):
            raise ValueError(f"{where}: bound: expected true or false, got {data['bound']!r:.40}")
        measured = data.get("measured_speedup")
        if measured is not None:
            _check_speedup(measured, f"{where}: measured_speedup")
        values = {f.name: data.get(f.name, f.default) for f in fields(cls)}
        return cls(**{**values, "finetuned_blocks": tuple(values["finetuned_blocks"])})


@dataclass(frozen=True)
class BaselineRow:
    """A model deployed instead of exits (a row of ``baselines``: lower resolution or another model), validated."""

    name: str
    kind: str
    AP50: float  # noqa: N815 (the COCO name, as in result.json)
    gflops: float
    flops_speedup: float
    latency: dict
    measured_speedup: dict

    @classmethod
    def from_json(cls, data: object, where: str) -> BaselineRow:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a baseline (a JSON object)")  # noqa: TRY004 (user input)
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"{where}: no {missing[0]!r}; not a baseline of an evaluate-exits design comparison")
        if not _finite(data["AP50"]) or not 0 <= data["AP50"] <= 1:
            raise ValueError(f"{where}: AP50: expected a finite number in [0, 1], got {data['AP50']!r}")
        for key in ("gflops", "flops_speedup"):
            if not _finite(data[key]) or data[key] <= 0:
                raise ValueError(f"{where}: {key}: expected a positive finite number, got {data[key]!r}")
        median = data["latency"].get("median_ms") if isinstance(data["latency"], dict) else None
        if not _finite(median) or median <= 0:
            raise ValueError(f"{where}: latency: expected a positive finite median_ms, got {data['latency']!r:.80}")
        _check_speedup(data["measured_speedup"], f"{where}: measured_speedup")
        return cls(**{f.name: data[f.name] for f in fields(cls)})


MAX_RATIO = 1e3  # a speed-up beyond 1000x is no measurement of an exit of the same model


def _check_speedup(measured: object, where: str) -> None:
    """A measured speed-up: positive, finite, plausible ratios, each interval's low end at most its high end."""
    if not isinstance(measured, dict):
        raise ValueError(f"{where}: expected a measured speed-up (a JSON object), got {measured!r:.60}")
    intervals = [measured.get(k) for k in ("round_ratio_iqr", "ci95") if k in measured]
    numbers = [measured.get("ratio"), *(v for pair in intervals if isinstance(pair, list) for v in pair)]
    if not all(_finite(v) and 0 < v <= MAX_RATIO for v in numbers):
        raise ValueError(f"{where}: expected positive finite ratios up to {MAX_RATIO:g}, got {measured!r:.80}")
    if not all(isinstance(pair, list) and len(pair) == 2 and pair[0] <= pair[1] for pair in intervals):
        raise ValueError(f"{where}: expected intervals as [low, high] with low <= high, got {measured!r:.80}")


def _check_full_model(full: object) -> None:
    """The comparison's full model: its AP50, GFLOPs and measured latency, as every judgement reads them."""
    where = "--designs: full_model"
    if not isinstance(full, dict):
        raise ValueError(f"{where}: expected the full model's numbers (a JSON object), got {full!r:.40}")
    if not _finite(full.get("AP50")) or not 0 <= full["AP50"] <= 1:
        raise ValueError(f"{where}: AP50: expected a finite number in [0, 1], got {full.get('AP50')!r:.40}")
    if not _finite(full.get("gflops")) or full["gflops"] <= 0:
        raise ValueError(f"{where}: gflops: expected a positive finite number, got {full.get('gflops')!r:.40}")
    latency = full.get("latency")
    median = latency.get("median_ms") if isinstance(latency, dict) else None
    if not _finite(median) or median <= 0:
        raise ValueError(f"{where}: latency: expected a positive finite median_ms, got {latency!r:.60}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def design_name(d: DesignRow) -> str:
    """``det heads, frozen`` or ``dense heads, blocks 2-3, 5-6 fine-tuned (2 before each exit)``: a design entry's
    head type and backbone."""
    head = f"{d.head} heads" + (f" on {d.det_tokens} det tokens" if d.det_tokens else "")
    if d.regime == "joint":
        return f"{head}, joint training ({tuned_blocks_text(d.finetuned_blocks)})"
    return f"{head}, {tuned_blocks_text(d.finetuned_blocks)}"


def setting_name(d: DesignRow) -> str:
    """``dense heads, frozen, exit 6`` or ``det heads, frozen, learned at 0.3``: the design and its setting."""
    setting = f"exit {d.layer}" if d.policy == "static" else f"{d.policy} at {d.threshold}"
    return f"{design_name(d)}, {setting}"


def _name(d: DesignRow) -> str:
    return f"{setting_name(d)} ({d.exits_dir})"


def _numbers(d: DesignRow, full: dict) -> str:
    text = f"AP50 {d.AP50:.3f} ({d.AP50 - full['AP50']:+.3f}), {d.mean_gflops:.3f} GFLOPs"
    measured = d.measured_speedup
    if measured:
        text += f", measured: {describe_speedup(measured)}"
        if "ci95" in measured:
            text += f", 95% interval {measured['ci95'][0]:.2f}-{measured['ci95'][1]:.2f}"
    return text + f", FLOPs {d.flops_speedup:.2f}x"


def efficiency(designs: list[DesignRow]) -> float:
    """The machine's measured/FLOPs speed-up ratio in this run: the best of the timed static exits (not the full
    model itself), at least 1 (a machine may run a smaller model no worse than its FLOPs say)."""
    ratios = [
        d.measured_speedup["ratio"] / d.flops_speedup
        for d in designs
        if d.policy == "static" and d.measured_speedup is not None and d.flops_speedup > 1 + FLOPS_MARGIN
    ]
    return max([1.0, *ratios])


def judge(d: DesignRow, min_speedup: float, machine: float) -> str:
    """One of ``JUDGEMENTS`` for a timed setting (see the module docstring); ``machine`` = ``efficiency``."""
    if d.flops_speedup <= 1 + FLOPS_MARGIN:
        return "saves no compute"
    low, high = _interval(d)
    explainable = d.flops_speedup * machine
    if explainable < min_speedup:
        return "does not pay"
    if low > explainable * CONSISTENCY_SLACK:
        return "timing inconsistent with compute"
    if low >= min_speedup:
        return "pays"
    if high < min_speedup:
        return "does not pay"
    return "inconclusive"


def recommend_design(result: dict, max_ap50_loss: float | None = None, min_speedup: float = MIN_SPEEDUP) -> dict:
    """The recommendation for ``result`` (an ``evaluate-exits`` result.json with ``designs``)."""
    if "designs" not in result:
        raise ValueError("--designs: expected an evaluate-exits result.json with a 'designs' list")
    tolerance = result.get("max_ap50_loss", 0.01) if max_ap50_loss is None else max_ap50_loss
    if not 0 <= tolerance < 1:
        raise ValueError(f"--max-ap50-loss: expected an AP50 difference in [0, 1), got {tolerance}")
    if not (np.isfinite(min_speedup) and min_speedup >= 1):
        raise ValueError(f"--min-speedup: expected a speed-up of at least 1, got {min_speedup}")
    _check_full_model(result.get("full_model"))
    full = result["full_model"]
    if not isinstance(result["designs"], list):
        raise ValueError("--designs: designs: expected a list of settings")
    designs = [DesignRow.from_json(d, f"--designs: designs[{i}]") for i, d in enumerate(result["designs"])]
    floor = full["AP50"] - tolerance
    machine = efficiency(designs)
    timed = [i for i, d in enumerate(designs) if not d.bound and d.measured_speedup is not None]
    baselines = [
        BaselineRow.from_json(b, f"--designs: baselines[{i}]") for i, b in enumerate(result.get("baselines", []))
    ]
    judged = {i: judge(designs[i], min_speedup, machine) for i in timed}
    beaten = {i: _beaten_by(designs[i], baselines) for i in timed if judged[i] == "pays"}
    judged.update({i: "beaten by a baseline" for i, by in beaten.items() if by is not None})
    detects = full["AP50"] > 0  # a model that finds nothing leaves an exit no accuracy to keep
    within = [i for i in timed if detects and designs[i].AP50 >= floor and not _is_full(designs[i], designs)]
    rationale = [_headline(result, designs, floor, tolerance, min_speedup, machine)]
    if tolerance != result.get("max_ap50_loss", tolerance):
        rationale.append(
            f"latency was measured for the cheapest settings within {result['max_ap50_loss']} of the full AP50; with "
            f"{tolerance} only settings timed then are candidates"
        )
    rationale += [
        f"{judged[i]}: {_name(designs[i])}: {_numbers(designs[i], full)}" + _beaten_text(beaten.get(i)) for i in within
    ]
    paying = [i for i in within if judged[i] == "pays"]
    unsure = [i for i in within if judged[i] in ("inconclusive", "timing inconsistent with compute")]
    chosen = min(paying, key=lambda i: designs[i].latency["median_ms"]) if paying else None
    verdict = VERDICTS[0] if paying else VERDICTS[2] if unsure else VERDICTS[1]
    summary = _summary(verdict, designs, chosen, unsure, full, tolerance, min_speedup, result)
    rationale += _context(designs, within, judged, floor, full)
    rationale += _new_full_models(result.get("folders", []), designs, full)
    compared = [_against_exits(b, designs, full) for b in baselines]
    rationale += [c["line"] for c in compared]
    budget = budget_line(result.get("folders", []), verdict)
    rationale += [budget] if budget else []
    rationale.append(f"verdict: {verdict}")
    return {
        "verdict": verdict,
        "summary": summary,
        "max_ap50_loss": tolerance,
        "min_speedup": min_speedup,
        "efficiency": machine,
        "judgements": {str(i): judged[i] for i in timed},
        "timing": result.get("timing", {}),
        "design": None if chosen is None else {"index": chosen, **result["designs"][chosen]},
        "budget": budget,
        "budget_card": budget_line(result.get("folders", []), verdict, command=False),
        "baselines": compared,
        "rationale": rationale,
    }


def _new_full_models(folders: list, designs: list[DesignRow], full: dict) -> list[str]:
    """Where a design trained the blocks its last layer is a new model: its AP50 beside the original model's (every
    exit's AP50 loss above is against the original, what a team would deploy otherwise)."""
    lines = []
    for folder in folders:
        if not isinstance(folder, dict) or not folder.get("finetuned_blocks") or "last_layer_AP50" not in folder:
            continue
        row = next((d for d in designs if d.exits_dir == folder["exits_dir"]), None)
        own = folder["last_layer_AP50"]
        if row is None or not _finite(own):
            continue
        lines.append(
            f"{design_name(row)} trains the blocks, so its last layer is a new model: AP50 {own:.3f} against the "
            f"original model's {full['AP50']:.3f} ({own - full['AP50']:+.3f}); every AP50 loss here is against the "
            "original"
        )
    return lines


def _beaten_by(d: DesignRow, baselines: list[BaselineRow]) -> BaselineRow | None:
    """The most accurate baseline at least as accurate as ``d`` and measured at least as fast, if any: an exit
    design pays only where nothing a team could deploy instead does as well at equal latency."""
    rivals = [b for b in baselines if b.AP50 >= d.AP50 and b.latency["median_ms"] <= d.latency["median_ms"]]
    return max(rivals, key=lambda b: b.AP50, default=None)


def _beaten_text(b: BaselineRow | None) -> str:
    if b is None:
        return ""
    return (
        f"; {b.name} does as well or better (AP50 {b.AP50:.3f}, {b.latency['median_ms']:.2f} ms median) at equal or "
        "lower measured latency"
    )


def _against_exits(b: BaselineRow, designs: list[DesignRow], full: dict) -> dict:
    """The baseline beside the most accurate timed exit setting measured at least as fast as it: which one a team
    should deploy at that latency, with the numbers."""
    as_fast = [
        i
        for i, d in enumerate(designs)
        if not d.bound and d.latency is not None and d.latency["median_ms"] <= b.latency["median_ms"]
    ]
    best = max(as_fast, key=lambda i: designs[i].AP50, default=None)
    line = (
        f"baseline {b.name}: AP50 {b.AP50:.3f} ({b.AP50 - full['AP50']:+.3f}), {b.gflops:.3f} GFLOPs, measured: "
        f"{describe_speedup(b.measured_speedup)}; "
    )
    card = f"{b.name}, AP50 {b.AP50:.3f} at {b.measured_speedup['ratio']:.2f}x measured "
    if best is None:
        line += "no timed exit setting was measured as fast"
        card += "(no exit setting as fast)"
        return {"name": b.name, "best_exit_as_fast": None, "exit_minus_baseline_ap50": None, "line": line, "card": card}
    gap = designs[best].AP50 - b.AP50
    winner = "the exit setting" if gap > 0 else "the baseline"
    verdict = f"{winner} is better by {abs(gap):.3f} AP50" if gap else "the same AP50"
    line += (
        f"the most accurate exit setting measured as fast or faster, {setting_name(designs[best])}, reaches AP50 "
        f"{designs[best].AP50:.3f} ({designs[best].latency['median_ms']:.2f} ms against "
        f"{b.latency['median_ms']:.2f} ms): {verdict}"
    )
    chosen = designs[best]
    how = f"exit {chosen.layer}" if chosen.policy == "static" else f"{chosen.policy} at {chosen.threshold}"
    card += f"(the best exit setting as fast: AP50 {chosen.AP50:.3f}, {how})"
    return {"name": b.name, "best_exit_as_fast": best, "exit_minus_baseline_ap50": gap, "line": line, "card": card}


def _is_full(d: DesignRow, designs: list[DesignRow]) -> bool:
    depth = max((x.layer for x in designs if x.policy == "static"), default=None)
    return d.policy == "static" and d.layer == depth and not d.finetuned_blocks


def _headline(
    result: dict, designs: list[DesignRow], floor: float, tolerance: float, min_speedup: float, machine: float
) -> str:
    full, timing = result["full_model"], result.get("timing", {})
    busy = busy_load(timing)
    warning = f" (busy machine: load {busy:.1f} on {timing['cores']} cores)" if busy else ""
    return (
        f"full model: AP50 {full['AP50']:.3f}, {full['gflops']:.3f} GFLOPs, {full['latency']['median_ms']:.2f} ms "
        f"median (IQR {full['latency']['iqr_ms']:.2f}) in the design comparison's timing run; tolerance: AP50 >= "
        f"{floor:.3f} (max loss {tolerance}); a "
        f"setting pays when the lower end of its speed-up's 95% interval clears {min_speedup:.2f}x; machine "
        f"efficiency {machine:.2f} (measured/FLOPs, static exits); "
        f"{describe_conditions(timing) or 'timing conditions not recorded'}{warning}; "
        f"{_settings_count(designs)} compared on {len(result['scored_image_ids'])} held-out images"
    )


def _settings_count(designs: list[DesignRow]) -> str:
    """``124 settings (100 exits and policies, 24 oracle bounds)``: every row counted once, the bounds named."""
    bounds = sum(d.bound for d in designs)
    return f"{len(designs)} settings ({len(designs) - bounds} exits and policies, {bounds} oracle bounds)"


def _summary(verdict, designs, chosen, unsure, full, tolerance, min_speedup, result) -> str:
    if full["AP50"] == 0:
        return f"{verdict}: the full model scores AP50 0 on these images, so an exit has no accuracy to keep"
    if chosen is not None:
        return f"{_name(designs[chosen])}: {_numbers(designs[chosen], full)}"
    if verdict == VERDICTS[2]:
        widest = max(unsure, key=lambda i: np.subtract(*_interval(designs[i])[::-1]))
        low, high = _interval(designs[widest])
        rounds = result.get("timing", {}).get("rounds", 0)
        what = (
            f"exceeds what its compute explains (FLOPs {designs[widest].flops_speedup:.2f}x)"
            if low > designs[widest].flops_speedup
            else f"straddles the {min_speedup:.2f}x bar"
        )
        return (
            f"inconclusive: timing spread {low:.2f}-{high:.2f}x (95% interval of {setting_name(designs[widest])}) "
            f"{what} on this machine; rerun with --timing-repeats {max(3, 2 * rounds)} or on a quiet machine"
        )
    return f"{verdict}: no setting within {tolerance} AP50 of the full model is measurably {min_speedup:.2f}x faster"


def _interval(d: DesignRow) -> list[float]:
    measured = d.measured_speedup
    return measured.get("ci95") or measured["round_ratio_iqr"]


def _context(designs: list[DesignRow], within: list[int], judged: dict, floor: float, full: dict) -> list[str]:
    """The best found where nothing pays: the cheapest within tolerance, the most accurate that pays outside it,
    and the oracle's bound."""
    lines = []
    if within:
        cheapest = min(within, key=lambda i: designs[i].mean_gflops)
        lines.append(f"cheapest within tolerance besides the full model: {_name(designs[cheapest])}")
    faster = [i for i, j in judged.items() if j == "pays" and i not in within]
    if faster:
        best = max(faster, key=lambda i: designs[i].AP50)
        lines.append(
            f"most accurate setting that pays outside the tolerance: {_name(designs[best])}: "
            f"{_numbers(designs[best], full)}; its AP50 is {floor - designs[best].AP50:.3f} below the tolerance"
        )
    bounds = [i for i, d in enumerate(designs) if d.bound and d.AP50 >= floor]
    if bounds:
        b = min(bounds, key=lambda i: designs[i].mean_gflops)
        lines.append(
            f"oracle bound (not a result): a perfect gate for F1 cut {designs[b].threshold} would run "
            f"{designs[b].mean_gflops:.3f} GFLOPs ({designs[b].flops_speedup:.2f}x by FLOPs) at AP50 "
            f"{designs[b].AP50:.3f} ({designs[b].exits_dir})"
        )
    return lines
