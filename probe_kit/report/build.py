"""Rendering a self-contained HTML report (jinja2, autoescaped; figures inlined as base64 PNG, tables as CSV data URIs).

Number format throughout: scores (AP, AP50, masses, accuracies) as fractions 0-1 with three decimals,
shares (of the final layer, of GFLOPs or latency saved) as percentages.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape

import probe_kit
import probe_kit.report.figures as figures  # noqa: PLR0402 - the module, not the package (no cycle via __init__)
from probe_kit.report.answer import alerts, answer
from probe_kit.report.collect import ReportData, collect
from probe_kit.report.frames import coco_summaries, example_frames, load_detections


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _ms(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "—"
    median, spread = value
    return f"{median:.1f} ms (mean)" if spread is None else f"{median:.1f} ms (IQR {spread:.1f})"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("probe_kit.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["ms"] = _ms
    return env


def _table(name: str, headers: Sequence[str], raw: list[list[Any]], formats: Sequence[Callable[[Any], str]]) -> dict:
    """A table to render (``rows`` formatted) with its raw numbers as a downloadable CSV data URI."""
    pairs = {i for row in raw for i, v in enumerate(row) if isinstance(v, tuple)}  # (median, IQR): two CSV columns
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c for i, h in enumerate(headers) for c in ((f"{h}: median", f"{h}: IQR") if i in pairs else (h,))])
    for row in raw:
        cells: list[Any] = []
        for i, v in enumerate(row):
            cells += list(v or (None, None)) if i in pairs else [v]
        writer.writerow(["" if v is None else v for v in cells])
    return {
        "name": name,
        "headers": list(headers),
        "rows": [[fmt(v) for fmt, v in zip(formats, row)] for row in raw],
        "csv": "data:text/csv;charset=utf-8," + quote(buffer.getvalue()),
        "file": f"{name}.csv",
    }


def _answer_table(card: dict) -> dict:
    headers = [
        "layer",
        "best readout",
        "its AP50",
        "% of final layer",
        "bar (AP50)",
        "pass/fail",
        "trained exit head AP50",
        "GFLOPs saved",
        "latency, median (IQR)",
    ]
    raw = [
        [
            f"{r['layer']} (final)" if r["final"] else r["layer"],
            r["readout"],
            r["AP50"],
            r["of_final"],
            r["bar"],
            "reference" if r["final"] else {True: "pass", False: "fail", None: None}[r["passes"]],
            r["exit_AP50"],
            r["gflops_saved"],
            r["latency"],
        ]
        for r in card["rows"]
    ]
    text = lambda v: "—" if v is None else str(v)
    return _table("answer", headers, raw, [text, text, _num, _pct, _num, text, _num, _pct, _ms])


def _layer_table(data: ReportData) -> dict | None:
    rows = data.table()
    if not rows:
        return None
    shown: list[tuple[str, Callable[[Any], str], str]] = [("layer", str, "layer")]  # header, format, row key
    columns = data.columns()
    for index, col in enumerate(columns):
        shown.append((col.label, _pct if col.percent else _num, col.key))
        last_of_analyzer = index + 1 == len(columns) or columns[index + 1].analyzer != col.analyzer
        if col.chance and last_of_analyzer:  # one chance column per analyzer, after its metrics
            shown.append((f"{col.analyzer}: chance", _num, f"{col.analyzer}:{col.chance}"))
    raw = [[row[key] for _, _, key in shown] for row in rows]
    return _table("per-layer", [h for h, _, _ in shown], raw, [f for _, f, _ in shown])


def _summary_table(summaries: dict[str, dict]) -> dict | None:
    if not summaries:
        return None
    keys = list(next(iter(summaries.values())))
    raw = [[name, *(s[k] for k in keys)] for name, s in summaries.items()]
    labels = {"AP": "AP (0.5:0.95)", "APs": "APs (small)", "APm": "APm (medium)", "APl": "APl (large)"}
    return _table("coco-per-exit", ["exit", *(labels.get(k, k) for k in keys)], raw, [str] + [_num] * len(keys))


def _sweep_table(data: ReportData) -> dict | None:
    sweep = (data.exits_eval or {}).get("sweep")
    if not sweep:
        return None
    raw = [[s["threshold"], s["AP50"], s["AP"], s["mean_gflops"], s.get("exit_histogram")] for s in sweep]
    return _table(
        "adaptive-sweep",
        ["threshold", "AP50", "AP (0.5:0.95)", "GFLOPs per image", "images per exit"],
        raw,
        [str, _num, _num, _num, lambda h: ", ".join(f"L{k}: {c}" for k, c in (h or {}).items())],
    )


def _designs_table(data: ReportData) -> dict | None:
    """Every design's static exit at each layer beside the full model and the baselines, on the same held-out
    images and in the same timing run: AP50, GFLOPs and measured latency."""
    result = data.designs or {}
    if not result.get("designs"):
        return None
    from probe_kit.decision.design import DesignRow, setting_name

    full = result["full_model"]
    rows = [["full model, in the design comparison's timing run", full["AP50"], full["gflops"], 1.0]]
    rows[0] += [_latency(full["latency"]), None]
    for i, d in enumerate(result["designs"]):
        row = DesignRow.from_json(d, f"designs[{i}]")
        if row.policy == "static" and row.latency is not None:
            speed = row.measured_speedup["ratio"]
            rows.append([setting_name(row), row.AP50, row.mean_gflops, row.flops_speedup, _latency(row.latency), speed])
    for b in result.get("baselines", []):
        name = f"baseline: {b['name']}"
        latency = _latency(b["latency"])
        rows.append([name, b["AP50"], b["gflops"], b["flops_speedup"], latency, b["measured_speedup"]["ratio"]])
    return _table(
        "designs-vs-baselines",
        ["setting", "AP50", "GFLOPs per image", "FLOPs speed-up", "latency", "measured speed-up"],
        rows,
        [str, _num, _num, _ratio, _ms, _ratio],
    )


def _latency(latency: dict) -> tuple[float, float]:
    return latency["median_ms"], latency["iqr_ms"]


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


CAPTIONS = {
    "ap-layer": (
        "Lines: AP50 of each readout at each measured layer (dashed: patch-token evidence). Black ticks: the bar "
        "each exit must reach. Red squares: trained exit heads."
    ),
    "attention": (
        "Raw-attention and rollout in-box mass and pointing game of matched detection tokens, and the Integrated "
        "Gradients attribution share inside the box, against chance (the share of patches inside the box)."
    ),
    "training": (
        "Each loss component per epoch (same colour for the same component in every figure); 'holdout' is the "
        "early-stopping loss."
    ),
}


def _designs_caption(data: ReportData) -> str:
    """The design figure's caption, with the latency check in words: front points measured on the other side
    of their FLOPs prediction are otherwise visible only as dots on the right panel."""
    caption = (
        "Every (exits folder, policy, threshold) on the same held-out images; dotted: the AP50 tolerance, grey "
        "line: the full model; hollow: the oracle, a bound no policy can run; black: the baselines a team would "
        "deploy instead, on the same images and in the same timing run (designs/result.json)."
    )
    checks = (data.designs or {}).get("latency_check") or []
    if checks:
        agree = sum(bool(c["agrees"]) for c in checks)
        caption += (
            f" Latency check: {agree} of {len(checks)} timed front points measured on the side their FLOPs predict "
            "(same: within 5% or not measurable)."
        )
    return caption


def _figures(data: ReportData) -> list[dict]:
    studied = figures.studied_layers(data, data.layers) if data.layers else None
    specs = [
        (
            "ap-layer",
            "AP50 per layer",
            figures.ap_vs_layer(data),
            CAPTIONS["ap-layer"],
        ),
        (
            "ap-gflops",
            "AP50 vs GFLOPs",
            figures.ap_vs_gflops(data),
            "Static exits, the adaptive policy's threshold sweep, the best readout per layer, and the Pareto front.",
        ),
        (
            "designs",
            "Exit designs: Pareto front",
            figures.design_pareto(data),
            _designs_caption(data),
        ),
        ("pr", "Precision-recall per exit (AP50)", figures.pr_curves(data), "COCO interpolated precision at IoU 0.5."),
        (
            "exits-by-difficulty",
            "Exit distribution per difficulty",
            figures.exit_distribution(data),
            _distribution_caption(data),
        ),
        (
            "attention",
            "Attention and attribution per layer",
            figures.evidence_per_layer(data),
            CAPTIONS["attention"],
        ),
        (
            "rollout",
            "Attention rollout overlays",
            figures.rollout_overlays(data),
            "Where a detection token's rolled-out attention goes at the exits studied; "
            "one colour scale for all panels.",
        ),
        ("pca", "PCA of patch tokens", figures.clustering_scatter(data, "pca"), "Person patches vs background."),
        ("umap", "UMAP of patch tokens", figures.clustering_scatter(data, "umap"), "Person patches vs background."),
        (
            "tsne",
            "t-SNE of patch tokens",
            figures.clustering_scatter(data, "tsne"),
            "Person patches vs background; t-SNE only places the points (silhouette and k-NN are computed in the "
            "PCA space, whatever the picture).",
        ),
    ]
    for name in sorted(data.results):
        history = data.results[name].get("training")
        if history:
            specs.append(
                (
                    f"train-{name}",
                    f"Training: {name}",
                    figures.training_curves(history, name, studied),
                    CAPTIONS["training"],
                )
            )
    if data.designs and data.designs.get("folders"):
        specs.append(
            (
                "learning-curves",
                "Learning curves: exits trained with their blocks",
                figures.learning_curves(data.designs["folders"]),
                "Holdout AP50 per exit and epoch of the designs whose blocks were trained (finetune, joint): still "
                "rising at the last epoch means more training may change the verdict (the decision's budget line).",
            )
        )
    if data.exits_config and data.exits_config.get("history"):
        specs.append(
            (
                "train-exits",
                "Training: exit heads",
                figures.training_curves(data.exits_config["history"], "exit heads"),
                "Set loss against ground truth and distillation towards the final layer, per component.",
            )
        )
    return [{"anchor": a, "title": t, "png": png, "caption": c} for a, t, png, c in specs if png]


def _write(html: str, out: Path) -> Path:
    """Write atomically: a failed render leaves no partial report behind."""
    from probe_kit.io import write_text

    return write_text(out, html)  # via a temporary file that is removed if the write fails


def _common() -> dict:
    return {"version": probe_kit.__version__, "created": datetime.now(UTC).isoformat(timespec="seconds")}


def build_report(results_dir: Path, out: Path, strict: bool = False) -> Path:
    """Write the report for ``results_dir`` to ``out`` (atomically); returns the path. ``strict``: refuse, before
    writing, a study with stages not measured yet."""
    data = collect(results_dir)
    missing = [hint["what"] for hint in data.hints]
    if strict and missing:
        raise ValueError(f"--results {results_dir}: not measured yet: {', '.join(missing)} (--strict)")
    card = answer(data)
    detections = load_detections(data)
    frames_png = example_frames(detections)
    figs = _figures(data)
    tables = {
        "layers": _layer_table(data),
        "coco": _summary_table(coco_summaries(detections)),
        "sweep": _sweep_table(data),
        "designs": _designs_table(data),
    }
    sections = (
        [("answer", "Answer")]
        + ([("frames", "Example frames")] if frames_png else [])
        + [("layers", "Per-layer evidence")]
        + [(f["anchor"], f["title"]) for f in figs]
        + [
            ("exits", "Exits"),
            ("rationale", "Rationale"),
            ("missing", "Not yet measured"),
            ("provenance", "Provenance"),
        ]
    )
    exits_eval = data.exits_eval or {}
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=data.name,
            model=model_title((data.cache_info or {}).get("model")),
            sections=sections,
            card=card,
            answer_table=_answer_table(card),
            alerts=alerts(data),
            decision=data.decision,
            frames_png=frames_png,
            frames_note=detections.note,
            tables=tables,
            exits_eval=exits_eval or None,
            figures=figs,
            hints=data.hints,
            cache_info=data.cache_info,
            results=data.results,
            experiment=data.experiment,
            **_common(),
        )
    )
    return _write(html, out)


def model_title(name: str | None) -> str:
    """How the report's title names the model: ``the reference YOLOS``, a hub id, or a folder's name."""
    if not name:
        return "a YOLOS detector"
    if name in ("reference", "shallow-reference"):
        return f"the {name} YOLOS"
    return name if "/" not in name or not Path(name).exists() else Path(name).name


def _distribution_caption(data) -> str:
    """Says so where the policy never exits early (the chart is then one bar at the last layer)."""
    dist = (data.exits_eval or {}).get("exit_distribution") or {}
    layers = {int(k) for counts in dist.values() for k, n in counts.items() if n}
    point = (data.exits_eval or {}).get("operating_point") or {}
    if len(layers) == 1:
        at = f" at threshold {point['threshold']}" if point.get("threshold") is not None else ""
        return (
            f"The policy never exits early{at}: every image ran to layer {layers.pop()}, so this operating point "
            "saves nothing. Easy frames should leave early, hard ones late."
        )
    return "Easy frames should leave early, hard ones late."


def _labels(folders: Sequence[Path]) -> list[str]:
    """Each study's folder name, with its parent where two share a name."""
    names = [Path(f).resolve().name for f in folders]
    return [f"{Path(f).resolve().parent.name}/{n}" if names.count(n) > 1 else n for f, n in zip(folders, names)]


def build_comparison(folders: Sequence[Path], out: Path) -> Path:
    """Two or more studies on the same curves, with each one's verdict; written atomically to ``out``."""
    if len(folders) < 2:
        raise ValueError(f"--compare: give two or more study folders (got {len(folders)})")
    runs = [collect(f) for f in folders]
    labels = _labels(folders)
    figs = [
        {"anchor": a, "title": t, "png": png, "caption": c}
        for a, t, png, c in (
            (
                "ap-layer",
                "AP50 per layer",
                figures.compare_ap_vs_layer(runs, labels),
                "Best readout per measured layer, trained exit heads and the bars, one colour per study.",
            ),
            (
                "ap-gflops",
                "AP50 vs GFLOPs",
                figures.compare_ap_vs_gflops(runs, labels),
                "Readouts, static exits and adaptive sweeps, one colour per study.",
            ),
        )
        if png
    ]
    studies = [{"label": label, "card": answer(run), "alerts": alerts(run)} for label, run in zip(labels, runs)]
    tables = [{"label": s["label"], "table": _answer_table(s["card"])} for s in studies]
    html = (
        _environment()
        .get_template("compare.html.j2")
        .render(title=" vs ".join(labels), studies=studies, tables=tables, figures=figs, **_common())
    )
    return _write(html, out)
