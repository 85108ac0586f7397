"""Report figures: seaborn/matplotlib, rendered to PNG and returned as base64 for inlining."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from probe_kit.report.collect import READOUTS, ReportData  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def ap_vs_layer(data: ReportData) -> str | None:
    rows = data.table()
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in READOUTS:
        points = [(r["layer"], r[name]) for r in rows if r[name] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    if data.decision:
        for layer in data.decision["exits"]:
            ax.axvline(layer, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="layer", ylabel="COCO AP50 (validation images)", title="Detection read out of each layer")
    ax.legend(fontsize=8)
    return _png(fig)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with fewer or equal GFLOPs and higher or equal AP."""
    front, best = [], -1.0
    for gflops, ap in sorted(points, key=lambda p: (p[0], -p[1])):
        if ap > best:
            front.append((gflops, ap))
            best = ap
    return front


def ap_vs_gflops(data: ReportData) -> str | None:
    fig, ax = plt.subplots(figsize=(7, 4))
    points = []
    if data.exits_eval:
        static = [(v["mean_gflops"], v["AP"], k) for k, v in data.exits_eval["exits"].items()]
        ax.scatter([s[0] for s in static], [s[1] for s in static], color="black", zorder=3, label="static exits")
        for g, ap, k in static:
            ax.annotate(f"L{k}", (g, ap), textcoords="offset points", xytext=(4, 4), fontsize=8)
        sweep = sorted((s["mean_gflops"], s["AP"]) for s in data.exits_eval["sweep"])
        ax.plot(*zip(*sweep), marker=".", label=f"adaptive ({data.exits_eval['policy']} sweep)")
        points = [(g, a) for g, a, _ in static] + sweep
        ylabel = "COCO AP (multi-exit model)"
    else:
        rows = [r for r in data.table() if r["gflops"] is not None]
        best = [
            (r["gflops"], max(v for v in (r[n] for n in READOUTS) if v is not None))
            for r in rows
            if any(r[n] is not None for n in READOUTS)
        ]
        if not best:
            plt.close(fig)
            return None
        ax.scatter(*zip(*best), label="best readout per layer")
        points = best
        ylabel = "COCO AP50 (best readout)"
    front = _pareto(points)
    ax.plot(*zip(*front), color="crimson", linestyle="--", linewidth=1, label="Pareto front")
    ax.set(xlabel="GFLOPs per image (2 x multiply-adds)", ylabel=ylabel, title="Accuracy vs compute")
    ax.legend(fontsize=8)
    return _png(fig)


def pr_curves(data: ReportData) -> str | None:
    if not data.exits_eval:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for layer, metrics in data.exits_eval["exits"].items():
        curve = metrics.get("pr_curve_iou50")
        if curve:
            precision = [float("nan") if p is None else p for p in curve["precision"]]
            ax.plot(curve["recall"], precision, label=f"exit L{layer} (AP50 {metrics['AP50']:.2f})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="recall", ylabel="precision", title="Precision-recall at IoU 0.5 per exit", xlim=(0, 1), ylim=(0, 1.02)
    )
    ax.legend(fontsize=8)
    return _png(fig)


def training_curves(histories: dict[str, list[dict]], title: str, max_layers: int = 4) -> str | None:
    """Loss components per epoch, one panel per layer (up to ``max_layers``)."""
    layers = sorted(histories, key=int)
    if not layers:
        return None
    layers = _spread(layers, max_layers)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        history = histories[layer]
        epochs = [h["epoch"] for h in history]
        for key in history[0]:
            if key != "epoch":
                ax.plot(epochs, [h[key] for h in history], label=key)
        ax.set(title=f"layer {layer}", xlabel="epoch")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, y=1.04)
    return _png(fig)


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
        shares = [dist[d].get(str(layer), 0) / max(1, sum(dist[d].values())) for d in order]
        ax.bar(order, shares, bottom=bottoms, color=colour, label=f"exit L{layer}")
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax.set(ylabel="share of images", title="Where images exit, by scene difficulty (operating point)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _png(fig)


def rollout_overlays(data: ReportData) -> str | None:
    """Rollout maps of one matched detection token per image, over the image where it is reachable."""
    arrays = data.arrays.get("rollout")
    if not arrays or not len(arrays.get("overlay_maps", [])):
        return None
    from PIL import Image

    maps, boxes, paths = arrays["overlay_maps"], arrays["overlay_boxes"], arrays["overlay_paths"]
    layers = list(arrays["overlay_layers"])
    shown = [i for i, k in enumerate(layers) if k in _spread(layers, 4)]
    fig, axes = plt.subplots(len(maps), len(shown), figsize=(2.4 * len(shown), 2.4 * len(maps)), squeeze=False)
    for row, (image_maps, box, path) in enumerate(zip(maps, boxes, paths)):
        image = Image.open(path).convert("RGB") if path and Path(path).is_file() else None
        for col, index in enumerate(shown):
            ax = axes[row][col]
            extent = (0, image.width, image.height, 0) if image else None
            if image:
                ax.imshow(image)
            ax.imshow(image_maps[index], cmap="inferno", alpha=0.55 if image else 1.0, extent=extent)
            ax.add_patch(plt.Rectangle(box[:2], box[2], box[3], fill=False, color="cyan", linewidth=1.2))
            ax.set_axis_off()
            if row == 0:
                ax.set_title(f"layer {layers[index]}", fontsize=9)
    fig.suptitle("Attention rollout of a matched detection token (cyan: its person)")
    return _png(fig)


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
    layers = sorted(int(k.rsplit("L", 1)[1]) for k in arrays if k.startswith(f"patch_{method}_L"))
    if not layers:
        return None
    layers = _spread(layers, 4)
    labels = arrays["patch_labels"]
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        points = arrays[f"patch_{method}_L{layer}"]
        for value, name, colour in ((0, "background", "#bbbbbb"), (1, "person", "#d62728")):
            chosen = labels == value
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, c=colour, label=name, alpha=0.7)
        ax.set(title=f"layer {layer}", xticks=[], yticks=[])
    axes[0][0].legend(fontsize=7, markerscale=3)
    fig.suptitle(f"Patch tokens, {method.upper()} (points: {len(labels)} sampled with the seed)", y=1.04)
    return _png(fig)
