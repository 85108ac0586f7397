"""Comparing exit designs: exits folders (any head type, frozen or fine-tuned blocks) x policies x thresholds.

A loop over designs of the one evaluation pipeline (``heads/pipeline.py``): every folder is scored on the
same images, those of ``--data`` that trained or early-stopped nothing in *any* of the folders
(``scored_image_ids``); each runs once per image with every exit recorded; every registered policy named
(``heads/policy_registry.py``) is fitted and swept from the records, beside the static exits. A policy
that is a ``bound`` (the oracle) is flagged ``"bound": true``, kept off the Pareto front and never timed.

The Pareto front is over (AP50 up, mean GFLOPs down) of every non-bound setting. Latency is then
measured for the unmodified model, every folder's static exits, up to ``MAX_TIMED_FRONT`` front points
(evenly spaced along it, both ends included), every (folder, policy)'s cheapest setting within
``max_ap50_loss`` of the full model and every baseline (``heads/baselines.py``), all interleaved in
one run; the *latency check* says, per timed front point, whether its measured speed-up is measurable
and on the side its FLOPs predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from probe_kit.data.spec import DataSpec
from probe_kit.heads.baselines import model_baselines, resolution_baselines, score_baseline
from probe_kit.heads.gate import TARGET_F1
from probe_kit.heads.pipeline import (
    Design,
    Setting,
    Timing,
    by_difficulty,
    check_thresholds,
    fit_policies,
    held_out,
    held_out_line,
    largest_input,
    score,
    settings,
    time_settings,
)
from probe_kit.heads.policy_registry import POLICIES
from probe_kit.metrics.coco import ground_truth_dict
from probe_kit.models.timing import speedup

RESULT_SCHEMA_VERSION = 2  # 2: schema_version; online policies timed live; policy info under "policy_info"
MAX_TIMED_FRONT = 8  # front points timed (evenly spaced along it): timing every point would dominate the run


def default_thresholds() -> dict[str, tuple[float, ...]]:
    """Each registered policy's own threshold grid."""
    return {name: spec.thresholds for name, spec in POLICIES.items()}


def parse_policies(text: str) -> tuple[str, ...]:
    """``confidence,patience,learned,oracle`` -> a tuple; names not registered refused in one line."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise ValueError(f"--policies {text!r}: expected a comma-separated subset of {','.join(POLICIES)}")
    return names


def _load_designs(exits_dirs: Sequence[Path], device: str) -> list[Design]:
    resolved = [Path(p).resolve() for p in exits_dirs]
    twice = next((p for i, p in enumerate(exits_dirs) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise ValueError(f"--exits {twice}: given twice; each exits folder is one design")
    designs = [Design.load(path, device) for path in exits_dirs]
    if all(d.config.finetuned_blocks for d in designs):
        raise ValueError(
            "--exits: give at least one folder without fine-tuned blocks (its last exit is the full model)"
        )
    return designs


def _entry(setting: Setting, samples) -> dict:
    """One row of ``designs``: the setting, its COCO metrics, mean GFLOPs and where images left."""
    design, spec = setting.design, setting.spec
    entry = {
        "exits_dir": str(design.path.resolve()),
        "head": design.config.head,
        "finetuned_blocks": list(design.config.finetuned_blocks),
        "regime": design.config.regime,
        "det_tokens": len(design.config.det_token_indices) or None,  # None: every detection token
        "policy": "static" if spec is None else spec.label,
        "threshold": setting.threshold,
        "layer": int(setting.layers[0]) if setting.static else None,
        **score(setting, None),
        "exit_by_difficulty": by_difficulty(samples, setting.layers),
        "bound": bool(spec and spec.bound),
    }
    if spec is not None and spec.cost is not None:
        size = design.profile.input_size
        entry["policy_cost_gflops_per_evaluation"] = {
            str(k): spec.cost(design.tokens_read(k, size), design.model.config.hidden_size)
            for k in design.records.layers[:-1]
        }
    if spec is not None and setting.fitted.info:
        entry["policy_info"] = setting.fitted.info
    return entry


def compare_designs(
    exits_dirs: Sequence[Path],
    data_spec: DataSpec,
    policies: Sequence[str] = tuple(POLICIES),
    thresholds: dict[str, Sequence[float]] | None = None,
    max_ap50_loss: float = 0.01,
    gate_cut: float = TARGET_F1,
    seed: int = 0,
    device: str = "cpu",
    timing: Timing | None = None,
    progress: bool = True,
    baseline_resolutions: Sequence[float] = (),
    baseline_models: Sequence[str] = (),
) -> dict:
    """The ``designs`` part of ``evaluate-exits`` over several folders (see the module docstring), with the
    baselines a team would deploy instead (``heads/baselines.py``): the reference design's model at each of
    ``baseline_resolutions`` (fractions of its input size) and each of ``baseline_models``."""
    thresholds, timing = _checked(policies, thresholds, max_ap50_loss), timing or Timing()
    designs = _load_designs(exits_dirs, device)
    reference = next(d for d in designs if not d.config.finetuned_blocks)
    baselines = resolution_baselines(
        reference.model, reference.processor, reference.config.base_model["name"], baseline_resolutions
    ) + model_baselines(baseline_models, device)
    loaded = data_spec.load()
    kept = held_out(loaded, designs, data_spec)
    samples = kept.samples
    gt, size = ground_truth_dict(samples), largest_input(designs[0], samples)
    every: list[Setting] = []
    for design in designs:
        design.record(samples, size, progress, sharded=False)
        design.score_against(gt)
        every += settings(design, fit_policies(design, policies, seed, gate_cut, progress), thresholds)
    entries = [_entry(s, samples) for s in every]
    compared = [score_baseline(b, samples, gt, progress) for b in baselines]
    full = next(
        e
        for s, e in zip(every, entries, strict=True)
        if s.design is reference and e["layer"] == reference.records.layers[-1]
    )
    for entry in entries:  # against the unmodified model, whichever folder it came with
        entry["flops_speedup"] = reference.profile.full / entry["mean_gflops"]
    front = pareto_front(entries)
    statics = {i for i, setting in enumerate(every) if setting.static}  # every design at each layer, as a table
    timed = sorted(
        set(_spread(front, MAX_TIMED_FRONT)) | _cheapest_within(entries, full["AP50"] - max_ap50_loss) | statics
    )
    run = time_settings(reference, samples, {i: every[i] for i in timed}, timing, progress, baselines)
    latency = run.latency
    for i in timed:
        entries[i]["latency"] = latency[i].to_json()
        entries[i]["measured_speedup"] = speedup(latency["full"], latency[i])
    for i, row in enumerate(compared):
        row["flops_speedup"] = reference.profile.full / row["gflops"]
        row["latency"] = latency[f"baseline-{i}"].to_json()
        row["measured_speedup"] = speedup(latency["full"], latency[f"baseline-{i}"])
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "scored_image_ids": [int(s.image_id) for s in samples],
        **kept.to_json(),
        "full_model": {
            **{k: full[k] for k in ("exits_dir", "AP", "AP50")},
            "gflops": reference.profile.full,
            "latency": latency["full"].to_json(),
        },
        "max_ap50_loss": max_ap50_loss,
        "folders": [_describe(d, entries) for d in designs],
        "policies": {name: POLICIES[name].summary for name in policies},
        "designs": entries,
        "baselines": compared,
        "pareto_front": front,
        "latency_check": latency_check(entries, front),
        "oracle": "bound, not a result: each image at the earliest exit whose kept detections reach F1 >= the cut "
        "against the final layer's (it looks at every exit, so no policy can run it)",
        "timing": {"images": min(timing.images, len(samples)), "min_repeats": timing.repeats, **run.to_json()},
    }


def _checked(policies: Sequence[str], thresholds: dict | None, max_ap50_loss: float) -> dict:
    """Options refused in one line before any work; returns every policy's threshold grid."""
    parse_policies(",".join(policies))
    if not 0 <= max_ap50_loss < 1:
        raise ValueError(f"--max-ap50-loss: expected an AP50 difference in [0, 1), got {max_ap50_loss}")
    for policy, cuts in (thresholds or {}).items():
        check_thresholds(cuts, f"thresholds[{policy!r}]")
    return {**default_thresholds(), **(thresholds or {})}


def _cheapest_within(entries: Sequence[dict], bar: float) -> set[int]:
    """Each (folder, adaptive policy)'s cheapest setting reaching AP50 ``bar``."""
    out = set()
    for key in {(d["exits_dir"], d["policy"]) for d in entries if not d["bound"] and d["policy"] != "static"}:
        within = [i for i, d in enumerate(entries) if (d["exits_dir"], d["policy"]) == key and d["AP50"] >= bar]
        if within:
            out.add(min(within, key=lambda i: entries[i]["mean_gflops"]))
    return out


def _describe(design: Design, entries: Sequence[dict]) -> dict:
    """The folder and how it was trained; ``last_layer_AP50``: its own final layer's (a new model where the
    blocks were trained)."""
    where, last = str(design.path.resolve()), design.records.layers[-1]
    own = next(e for e in entries if e["exits_dir"] == where and e["policy"] == "static" and e["layer"] == last)
    return {
        "exits_dir": where,
        "last_layer_AP50": own["AP50"],
        "head": design.config.head,
        "finetuned_blocks": list(design.config.finetuned_blocks),
        "regime": design.config.regime,
        "det_token_indices": list(design.config.det_token_indices),
        "learning_curves": design.config.learning_curves(),
        "training": {"cache": design.config.cache, **design.config.training},
        "layers": list(design.records.layers),
        "heads_trained_on_image_ids": list(design.config.train_image_ids),
        "heads_early_stopped_on_image_ids": list(design.config.holdout_image_ids),
        "policies_fitted_on_image_ids": list(design.policies_fitted_on),
    }


def _spread(indices: Sequence[int], most: int) -> list[int]:
    """At most ``most`` of ``indices``, evenly spaced along them, both ends kept."""
    if len(indices) <= most:
        return list(indices)
    return [indices[j] for j in sorted({round(i * (len(indices) - 1) / (most - 1)) for i in range(most)})]


def pareto_front(designs: Sequence[dict]) -> list[int]:
    """Indices of the non-bound designs that no other non-bound design beats on AP50 (up) and mean GFLOPs
    (down) together, cheapest first; of identical points the first listed stands for them."""
    candidates = [i for i, d in enumerate(designs) if not d["bound"]]

    def beats(j: int, i: int) -> bool:
        a, b = designs[i], designs[j]
        if b["AP50"] < a["AP50"] or b["mean_gflops"] > a["mean_gflops"]:
            return False
        return b["AP50"] > a["AP50"] or b["mean_gflops"] < a["mean_gflops"] or j < i

    front = [i for i in candidates if not any(beats(j, i) for j in candidates if j != i)]
    return sorted(front, key=lambda i: designs[i]["mean_gflops"])


def _side(ratio: float, measurable: bool = True) -> str:
    if not measurable or abs(ratio - 1) < 0.05:
        return "same"
    return "faster" if ratio > 1 else "slower"


def latency_check(designs: Sequence[dict], front: Sequence[int]) -> list[dict]:
    """Per timed front point: what the FLOPs predict (faster / slower / same: within 5%) against what was
    measured (same: a per-round IQR holding 1, or within 5%), and whether the two agree."""
    out = []
    for i in front:
        d = designs[i]
        if "measured_speedup" not in d:
            continue
        measured = d["measured_speedup"]
        predicted, found = _side(d["flops_speedup"]), _side(measured["ratio"], measured["measurable"])
        out.append(
            {
                "design": i,
                "flops_speedup": d["flops_speedup"],
                "measured_speedup": measured,
                "predicted": predicted,
                "measured": found,
                "agrees": predicted == found,
            }
        )
    return out


def design_lines(result: dict) -> list[str]:
    """What ``evaluate-exits --policies`` prints: the full model, the Pareto front with latency, the oracle's bound."""
    from probe_kit.decision.design import DesignRow, design_name, setting_name
    from probe_kit.models.timing import describe_speedup

    full = result["full_model"]
    rows = [DesignRow.from_json(d, f"designs[{i}]") for i, d in enumerate(result["designs"])]
    lines = [
        (
            f"{held_out_line(result)}; {len(rows)} settings ({sum(r.bound for r in rows)} of them oracle bounds) "
            f"over {len(result['folders'])} exits folders"
        ),
        (
            f"full model: AP50 {full['AP50']:.4f}  {full['gflops']:.3f} GFLOPs  {full['latency']['median_ms']:.2f} ms "
            f"(IQR {full['latency']['iqr_ms']:.2f}) in the design comparison's timing run"
        ),
        "Pareto front (AP50 vs mean GFLOPs; the oracle is a bound and kept off it):",
    ]
    for i in result["pareto_front"]:
        d = rows[i]
        measured = f"  measured: {describe_speedup(d.measured_speedup)}" if d.measured_speedup else ""
        lines.append(
            f"  {setting_name(d)}: AP50 {d.AP50:.4f}  {d.mean_gflops:.3f} GFLOPs "
            f"(FLOPs {d.flops_speedup:.2f}x){measured}"
        )
    checks = result["latency_check"]
    disagree = [c for c in checks if not c["agrees"]]
    lines.append(
        f"latency check: {len(checks) - len(disagree)} of {len(checks)} timed front points measured on the side "
        "their FLOPs predict (same: within 5% or not measurable)"
    )
    for c in disagree:
        lines.append(
            f"  {setting_name(rows[c['design']])}: FLOPs predict {c['predicted']} ({c['flops_speedup']:.2f}x); "
            f"measured {c['measured']}: {describe_speedup(c['measured_speedup'])}"
        )
    for b in result.get("baselines", []):
        lines.append(
            f"baseline {b['name']}: AP50 {b['AP50']:.4f}  {b['gflops']:.3f} GFLOPs (FLOPs {b['flops_speedup']:.2f}x)  "
            f"measured: {describe_speedup(b['measured_speedup'])}"
        )
    bounds = [d for d in rows if d.bound and d.AP50 >= full["AP50"] - result["max_ap50_loss"]]
    if bounds:
        b = min(bounds, key=lambda d: d.mean_gflops)
        lines.append(
            f"oracle bound (not a result): {design_name(b)}, F1 cut {b.threshold}: "
            f"AP50 {b.AP50:.4f} at {b.mean_gflops:.3f} GFLOPs ({b.flops_speedup:.2f}x by FLOPs)"
        )
    return lines
