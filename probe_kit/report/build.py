"""Rendering a self-contained HTML report (jinja2, autoescaped; figures inlined as base64 PNG)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

import probe_kit
from probe_kit.report import figures
from probe_kit.report.collect import READOUTS, ReportData, collect


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("probe_kit.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


def _figures(data: ReportData) -> list[dict]:
    specs = [
        (
            "ap-layer",
            "mAP vs layer",
            figures.ap_vs_layer(data),
            "AP50 of each readout per layer; dotted lines mark the recommended exits.",
        ),
        (
            "ap-gflops",
            "mAP vs GFLOPs",
            figures.ap_vs_gflops(data),
            "Static exits, the adaptive policy's threshold sweep, and the Pareto front.",
        ),
        ("pr", "Precision-recall per exit", figures.pr_curves(data), "COCO interpolated precision at IoU 0.5."),
        (
            "exits-by-difficulty",
            "Exit distribution per difficulty",
            figures.exit_distribution(data),
            "Easy frames should leave early, hard ones late.",
        ),
        (
            "rollout",
            "Attention rollout overlays",
            figures.rollout_overlays(data),
            "Where a detection token's rolled-out attention goes, layer by layer.",
        ),
        ("pca", "PCA of patch tokens", figures.clustering_scatter(data, "pca"), "Person patches vs background."),
        ("umap", "UMAP of patch tokens", figures.clustering_scatter(data, "umap"), "Person patches vs background."),
    ]
    for name in ("tuned-lens", "probe-linear", "probe-mlp", "probe-dense"):
        history = data.results.get(name, {}).get("training")
        if history:
            specs.append(
                (
                    f"train-{name}",
                    f"Training: {name}",
                    figures.training_curves(history, name),
                    "Each loss component per epoch; 'holdout' is the early-stopping loss.",
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


def build_report(results_dir: Path, out: Path) -> Path:
    """Write the report for ``results_dir`` to ``out`` (atomically); returns the path."""
    data = collect(results_dir)
    figs = _figures(data)
    exits_eval = data.exits_eval or {}
    sections = (
        [("summary", "Summary"), ("layers", "Per-layer")]
        + [(f["anchor"], f["title"]) for f in figs]
        + [("missing", "Missing"), ("provenance", "Provenance")]
    )
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=Path(results_dir).name,
            model=(data.cache_info or {}).get("model", "a YOLOS detector"),
            sections=sections,
            decision=data.decision,
            operating_point=exits_eval.get("operating_point"),
            exit_layers=[int(k) for k in exits_eval.get("exits", {})],
            static_exits=exits_eval.get("exits", {}),
            hierarchy_ok=exits_eval.get("hierarchy_ok"),
            evaluated_on=exits_eval.get("evaluated_on", "the evaluation data"),
            full_model=exits_eval.get("full_model"),
            policy=exits_eval.get("policy"),
            table=data.table(),
            readouts=READOUTS,
            figures=figs,
            missing=data.missing,
            cache_info=data.cache_info,
            results=data.results,
            experiment=data.experiment,
            version=probe_kit.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
    )
    from probe_kit.io import write_text

    return write_text(out, html)  # via a temporary file that is removed if the write fails
