"""Report figures: seaborn/matplotlib, rendered to PNG and returned as base64 for inlining.

Every axis says what it measures and in which unit; AP figures say AP50 or AP (0.5:0.95); the same
loss component has the same colour in every figure; layer panels show the exits the study considered.
"""

from __future__ import annotations

import base64
import io
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns

from probe_kit.report.answer import considered_exits
from probe_kit.report.collect import ReportData

sns.set_theme(style="whitegrid", context="notebook")
PALETTE = sns.color_palette("tab10")
# loss components seen in probe_kit's training histories, each with its colour in every figure
COMPONENTS = ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_distill", "holdout", "loss_dense", "loss_objectness")


def png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def component_colour(name: str):
    """The colour of a loss component, the same in every figure (unknown names by a stable hash)."""
    index = COMPONENTS.index(name) if name in COMPONENTS else zlib.crc32(name.encode()) % len(PALETTE)
    return PALETTE[index % len(PALETTE)]


def studied_layers(data: ReportData, available: list[int], count: int = 4) -> list[int]:
    """The exits the study considered, among ``available``; evenly spread layers where it considered none."""
    chosen = [k for k in considered_exits(data) if k in available]
    return chosen if len(chosen) >= 2 else _spread(sorted(available), count)


def _bars(data: ReportData) -> list[tuple[int, float]]:
    evidence = (data.decision or {}).get("evidence") or {}
    return sorted((int(k), v["bar_AP50"]) for k, v in evidence.items() if v.get("bar_AP50") is not None)


def _exit_heads(data: ReportData) -> list[tuple[int, float]]:
    return sorted((int(k), v["AP50"]) for k, v in ((data.exits_eval or {}).get("exits") or {}).items())


def _best_per_layer(data: ReportData) -> list[tuple[int, float]]:
    return [(k, best[1]) for k in data.layers if (best := data.best_readout(k))]


def ap_vs_layer(data: ReportData) -> str | None:
    """Every readout's AP50 per measured layer, AP50-valued evidence dashed, the bars and the trained exit heads."""
    series = [(n, "-") for n in data.by_role("readout")] + [
        (n, "--") for n in data.by_role("evidence") if data.roles[n]["metrics"][0][0] == "AP50"
    ]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for index, (name, style) in enumerate(series):
        points = [(k, v) for k in data.layers if (v := data.value(name, k, "AP50")) is not None]
        if points:
            label = data.roles[name]["metrics"][0][1]
            ax.plot(*zip(*points), linestyle=style, marker="o", markersize=4, color=PALETTE[index], label=label)
    bars = _bars(data)
    if bars:
        ax.scatter(*zip(*bars), marker="_", s=400, linewidths=2.5, color="black", zorder=4, label="bar (minimum AP50)")
    heads = _exit_heads(data)
    if heads:
        ax.scatter(*zip(*heads), marker="s", s=45, color="crimson", zorder=5, label="trained exit head AP50")
    ax.set(
        xlabel="layer (block index)",
        ylabel="COCO AP50 (validation images, 0-1)",
        title="AP50 read out of each layer, the bar it must reach, and trained exit heads",
        ylim=(0, 1),
    )
    ax.set_xticks(data.layers)
    ax.legend(fontsize=7, loc="upper left")
    return png(fig)


def compare_ap_vs_layer(runs: list[ReportData], labels: list[str]) -> str | None:
    """Several studies on the same axes: best readout AP50 per layer (line), exit heads (squares), bars (ticks)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = False
    for index, (data, label) in enumerate(zip(runs, labels)):
        colour = PALETTE[index % len(PALETTE)]
        best = _best_per_layer(data)
        if best:
            ax.plot(*zip(*best), marker="o", markersize=4, color=colour, label=f"{label}: best readout")
            drawn = True
        heads = _exit_heads(data)
        if heads:
            ax.scatter(*zip(*heads), marker="s", s=40, color=colour, label=f"{label}: exit heads")
        bars = _bars(data)
        if bars:
            ax.scatter(*zip(*bars), marker="_", s=300, linewidths=2, color=colour, label=f"{label}: bars")
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="layer (block index)", ylabel="COCO AP50 (validation images, 0-1)", ylim=(0, 1))
    ax.set_title("AP50 per layer: best readout, trained exit heads and bars, per study")
    ax.legend(fontsize=7, loc="upper left")
    return png(fig)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with fewer or equal GFLOPs and higher or equal AP."""
    front, best = [], -1.0
    for gflops, ap in sorted(points, key=lambda p: (p[0], -p[1])):
        if ap > best:
            front.append((gflops, ap))
            best = ap
    return front


def _gflops_points(data: ReportData) -> tuple[list, list, list]:
    """(static exits [(GFLOPs, AP50, layer)], adaptive sweep [(GFLOPs, AP50)], best readout [(GFLOPs, AP50)])."""
    ev = data.exits_eval or {}
    static = [(v["mean_gflops"], v["AP50"], k) for k, v in (ev.get("exits") or {}).items()]
    sweep = sorted((s["mean_gflops"], s["AP50"]) for s in ev.get("sweep", []))
    cost = next(iter(data.by_role("cost")), None)
    readout = []
    if cost:
        for layer, ap50 in _best_per_layer(data):
            gflops = data.value(cost, layer, "gflops_to_exit")
            if gflops is not None:
                readout.append((gflops, ap50))
    return static, sweep, readout


def ap_vs_gflops(data: ReportData) -> str | None:
    """AP50 against GFLOPs per image: static exits, the policy's threshold sweep, best readouts, the Pareto front."""
    static, sweep, readout = _gflops_points(data)
    if not (static or readout):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if readout:
        ax.plot(*zip(*readout), linestyle=":", marker="o", markersize=3, color="grey", label="best readout per layer")
    if static:
        ax.scatter([s[0] for s in static], [s[1] for s in static], color="black", zorder=3, label="static exits")
        for g, ap, k in static:
            ax.annotate(f"L{k}", (g, ap), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if sweep:
        ax.plot(*zip(*sweep), marker=".", label=f"adaptive ({data.exits_eval['policy']} threshold sweep)")
    measured = [(g, a) for g, a, _ in static] + sweep
    if measured:
        ax.plot(*zip(*_pareto(measured)), color="crimson", linestyle="--", linewidth=1, label="Pareto front (exits)")
    ax.set(
        xlabel="GFLOPs per image (2 x multiply-adds)",
        ylabel="COCO AP50 (0-1)",
        title="AP50 against compute",
        ylim=(0, 1),
    )
    ax.legend(fontsize=7)
    return png(fig)


def compare_ap_vs_gflops(runs: list[ReportData], labels: list[str]) -> str | None:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = False
    for index, (data, label) in enumerate(zip(runs, labels)):
        colour = PALETTE[index % len(PALETTE)]
        static, sweep, readout = _gflops_points(data)
        if readout:
            ax.plot(*zip(*readout), linestyle=":", marker="o", markersize=3, color=colour, label=f"{label}: readouts")
        if static:
            ax.scatter(
                [s[0] for s in static], [s[1] for s in static], color=colour, marker="s", label=f"{label}: exits"
            )
        if sweep:
            ax.plot(*zip(*sweep), color=colour, label=f"{label}: adaptive sweep")
        drawn = drawn or bool(readout or static)
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="GFLOPs per image (2 x multiply-adds)", ylabel="COCO AP50 (0-1)", ylim=(0, 1))
    ax.set_title("AP50 against compute, per study")
    ax.legend(fontsize=7)
    return png(fig)


def design_pareto(data: ReportData) -> str | None:
    """Every exit design's settings: AP50 against mean GFLOPs (left) and against measured latency (right, timed
    settings); one colour per exits folder, the Pareto front, the oracle drawn hollow as a bound, the baselines
    (lower resolution, another model) in black."""
    if not data.designs:
        return None
    designs, front = data.designs["designs"], data.designs["pareto_front"]
    full = data.designs["full_model"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for colour, folder in zip(PALETTE, data.designs["folders"]):
        regime = folder.get("regime") or ("finetune" if folder["finetuned_blocks"] else "frozen")
        tokens = len(folder.get("det_token_indices") or [])
        label = f"{folder['head']}{f' on {tokens} det tokens' if tokens else ''}, {regime}"
        mine = [d for d in designs if d["exits_dir"] == folder["exits_dir"]]
        real, bound = [d for d in mine if not d["bound"]], [d for d in mine if d["bound"]]
        left.scatter([d["mean_gflops"] for d in real], [d["AP50"] for d in real], s=14, color=colour, label=label)
        left.scatter(
            [d["mean_gflops"] for d in bound], [d["AP50"] for d in bound], s=22, facecolors="none", edgecolors=colour
        )
        timed = [d for d in real if "latency" in d]
        right.scatter(
            [d["latency"]["median_ms"] for d in timed], [d["AP50"] for d in timed], s=14, color=colour, label=label
        )
    left.plot(
        [designs[i]["mean_gflops"] for i in front],
        [designs[i]["AP50"] for i in front],
        "--",
        color="crimson",
        linewidth=1,
        label="Pareto front",
    )
    left.scatter([], [], s=22, facecolors="none", edgecolors="grey", label="oracle (bound, not a result)")
    for marker, b in zip("Dsp^v<>", data.designs.get("baselines", [])):  # what a team would deploy instead
        left.scatter(b["gflops"], b["AP50"], s=40, marker=marker, color="black", label=f"baseline: {b['name']}")
        right.scatter(b["latency"]["median_ms"], b["AP50"], s=40, marker=marker, color="black")
    for ax, x in ((left, full["gflops"]), (right, full["latency"]["median_ms"])):
        ax.axhline(full["AP50"] - data.designs["max_ap50_loss"], color="grey", linewidth=0.8, linestyle=":")
        ax.axvline(x, color="grey", linewidth=0.8)
    left.set(xlabel="mean GFLOPs per image (2 x multiply-adds)", ylabel="COCO AP50 (0-1)", ylim=(0, 1))
    right.set(xlabel="measured latency per image, median (ms, batch 1)", ylabel="COCO AP50 (0-1)", ylim=(0, 1))
    left.set_title("Exit designs: AP50 against compute", fontsize=10)
    right.set_title("Timed settings: AP50 against latency", fontsize=10)
    left.legend(fontsize=7)
    return png(fig)


def pr_curves(data: ReportData) -> str | None:
    if not data.exits_eval:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for index, (layer, metrics) in enumerate(data.exits_eval["exits"].items()):
        curve = metrics.get("pr_curve_iou50")
        if curve:
            precision = [float("nan") if p is None else p for p in curve["precision"]]
            ax.plot(
                curve["recall"], precision, color=PALETTE[index], label=f"exit L{layer} (AP50 {metrics['AP50']:.3f})"
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="recall (0-1)",
        ylabel="precision (0-1)",
        title="Precision-recall at IoU 0.5 (AP50) per exit",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    return png(fig)


def training_curves(histories: dict[str, list[dict]], title: str, layers: list[int] | None = None) -> str | None:
    """Loss components per epoch, one panel per layer (``layers``: those shown; default up to four spread)."""
    available = sorted(int(k) for k in histories)
    if not available:
        return None
    shown = [k for k in (layers or []) if k in available] or _spread(available, 4)
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3), squeeze=False)
    for ax, layer in zip(axes[0], shown):
        history = histories[str(layer)]
        epochs = [h["epoch"] for h in history]
        for key in history[0]:
            if key != "epoch":
                ax.plot(epochs, [h[key] for h in history], label=key, color=component_colour(key))
        ax.set(title=f"layer {layer}", xlabel="epoch", ylabel="loss (mean per epoch)")
    axes[0][-1].legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title, y=1.04)
    return png(fig)


def learning_curves(folders: list[dict]) -> str | None:
    """Holdout AP50 per epoch of every exit of every live-trained design (finetune, joint): one panel per design."""
    from probe_kit.decision.budget import curves

    found = curves(folders)
    if not found:
        return None
    designs = list(dict.fromkeys(c.design for c in found))
    fig, axes = plt.subplots(1, len(designs), figsize=(3.4 * len(designs), 3), squeeze=False, sharey=True)
    for ax, design in zip(axes[0], designs):
        mine = [c for c in found if c.design == design]
        for colour, curve in zip(sns.color_palette("viridis", len(mine)), mine):
            ax.plot(
                range(1, len(curve.values) + 1), curve.values, marker="o", color=colour, label=f"exit {curve.layer}"
            )
        ax.set(title=design, xlabel="epoch (live training)", ylabel="holdout AP50")
        ax.title.set_fontsize(7)
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return png(fig)


def exit_distribution(data: ReportData) -> str | None:
    if not data.exits_eval or not data.exits_eval.get("exit_distribution"):
        return None
    dist = data.exits_eval["exit_distribution"]
    layers = sorted({int(k) for counts in dist.values() for k in counts})
    order = [d for d in ("easy", "medium", "hard") if d in dist] + [
        d for d in dist if d not in ("easy", "medium", "hard")
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottoms = [0.0] * len(order)
    palette = sns.color_palette("viridis", len(layers))
    for colour, layer in zip(palette, layers):
        shares = [100 * dist[d].get(str(layer), 0) / max(1, sum(dist[d].values())) for d in order]
        ax.bar(order, shares, bottom=bottoms, color=colour, label=f"exit L{layer}")
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax.set(
        xlabel="scene difficulty",
        ylabel="share of images (%)",
        title="Where images exit, by scene difficulty (operating point)",
    )
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return png(fig)


def evidence_per_layer(data: ReportData) -> str | None:
    """Evidence metrics that have a chance level (attention in-box mass, pointing game, IG attribution) per layer."""
    names = [n for n in data.by_role("evidence") if data.roles[n].get("chance")]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    index = 0
    for name in names:
        for key, label in data.roles[name]["metrics"]:
            points = [(k, v) for k in data.layers if (v := data.value(name, k, key)) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=4, color=PALETTE[index % 10], label=label)
                index += 1
        chance = [(k, v) for k in data.layers if (v := data.value(name, k, data.roles[name]["chance"])) is not None]
        if chance:
            ax.plot(*zip(*chance), linestyle=":", color="grey", label=f"chance ({name}: share of patches in box)")
    if not ax.lines:  # no layer measured any of them (e.g. no detection matched a person): no figure
        plt.close(fig)
        return None
    ax.set(
        xlabel="layer (block index)",
        ylabel="share (0-1)",
        title="Where the detection tokens look: in-box mass, pointing game, IG attribution",
        ylim=(0, 1),
    )
    ax.set_xticks(data.layers)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return png(fig)


def rollout_overlays(data: ReportData) -> str | None:
    """Rollout maps of one matched detection token per image, one shared colour scale with its colour bar."""
    arrays = data.arrays.get("rollout")
    if not arrays or not len(arrays.get("overlay_maps", [])):
        return None
    from PIL import Image

    maps, boxes, paths = arrays["overlay_maps"], arrays["overlay_boxes"], arrays["overlay_paths"]
    layers = [int(k) for k in arrays["overlay_layers"]]
    shown = [layers.index(k) for k in studied_layers(data, layers)]
    vmax = float(max(maps[:, i].max() for i in shown)) or 1.0
    fig, axes = plt.subplots(len(maps), len(shown), figsize=(2.4 * len(shown) + 0.8, 2.4 * len(maps)), squeeze=False)
    for row, (image_maps, box, path) in enumerate(zip(maps, boxes, paths)):
        image = Image.open(path).convert("RGB") if path and Path(path).is_file() else None
        for col, index in enumerate(shown):
            ax = axes[row][col]
            extent = (0, image.width, image.height, 0) if image else None
            if image:
                ax.imshow(image)
            shade = ax.imshow(
                image_maps[index], cmap="inferno", vmin=0, vmax=vmax, alpha=0.55 if image else 1.0, extent=extent
            )
            ax.add_patch(plt.Rectangle(box[:2], box[2], box[3], fill=False, color="cyan", linewidth=1.2))
            ax.set_axis_off()
            if row == 0:
                ax.set_title(f"layer {layers[index]}", fontsize=9)
    bar = fig.colorbar(shade, ax=axes, fraction=0.025, pad=0.02)
    bar.set_label("rollout mass per patch (share of the token's total; same scale in every panel)", fontsize=8)
    fig.suptitle("Attention rollout of a matched detection token (cyan: its person)")
    return png(fig)


def _spread(values: list, count: int) -> list:
    if len(values) <= count:
        return values
    step = (len(values) - 1) / (count - 1)
    return [values[round(i * step)] for i in range(count)]


def clustering_scatter(data: ReportData, method: str) -> str | None:
    """2-D PCA or UMAP embeddings of patch tokens per layer, coloured person/background."""
    arrays = data.arrays.get("clustering")
    if not arrays or "patch_labels" not in arrays:
        return None
    available = sorted(int(k.rsplit("L", 1)[1]) for k in arrays if k.startswith(f"patch_{method}_L"))
    if not available:
        return None
    layers = studied_layers(data, available)
    labels = arrays["patch_labels"]
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
    axis = {"pca": "PC", "umap": "UMAP", "tsne": "t-SNE"}[method]
    for ax, layer in zip(axes[0], layers):
        points = arrays[f"patch_{method}_L{layer}"]
        for value, name, colour in ((0, "background", "#bbbbbb"), (1, "person", "#d62728")):
            chosen = labels == value
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, c=colour, label=name, alpha=0.7)
        ax.set(title=f"layer {layer}", xticks=[], yticks=[], xlabel=f"{axis} 1 (a.u.)", ylabel=f"{axis} 2 (a.u.)")
    axes[0][0].legend(fontsize=7, markerscale=3)
    name = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}[method]
    fig.suptitle(f"Patch tokens, {name} (points: {len(labels)} sampled with the seed)", y=1.04)
    return png(fig)
