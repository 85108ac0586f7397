"""Example frames and per-exit COCO summaries, from ``exits_eval/detections/*.json`` (COCO results format).

``evaluate-exits`` writes ``full.json`` and ``exit-<k>.json`` and lists ``scored_image_ids`` in its
``result.json``; its ``data`` entry reloads the images and ground truth. Where any of that is missing
the section is left out with a note saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from probe_kit.report.collect import ReportData

SCORE_CUT = 0.5  # detections drawn on example frames (scoring always uses the full ranked list)
DIFFICULTIES = ("easy", "medium", "hard")


@dataclass
class ExitDetections:
    """Detections per exit ("L3", ..., "full") on the scored held-out samples."""

    samples: list = field(default_factory=list)  # probe_kit.data.sample.Sample
    by_exit: dict[str, list[dict]] = field(default_factory=dict)
    note: str | None = None  # why there is nothing, when there is nothing


def load_detections(data: ReportData) -> ExitDetections:
    ev = data.exits_eval
    folder = data.folder / "exits_eval" / "detections"
    if not ev:
        return ExitDetections(note="no exit evaluation (exits_eval/result.json) in this study")
    files = sorted(folder.glob("exit-*.json"), key=lambda p: int(p.stem.split("-", 1)[1]))
    if not (folder / "full.json").is_file() or "scored_image_ids" not in ev or "data" not in ev:
        return ExitDetections(
            note=f"{folder}/full.json, exit-<k>.json or scored_image_ids in result.json are missing "
            "(written by probe-kit evaluate-exits)"
        )
    from probe_kit.data.spec import DataSpec

    scored = set(ev["scored_image_ids"])
    try:
        samples = [s for s in DataSpec.from_description(ev["data"]).load() if s.image_id in scored]
    except (ValueError, OSError, TypeError) as err:
        return ExitDetections(note=f"the evaluation data {ev['data'].get('path')} cannot be read here ({err})")
    by_exit = {f"L{p.stem.split('-', 1)[1]}": json.loads(p.read_text()) for p in files}
    by_exit["full"] = json.loads((folder / "full.json").read_text())
    return ExitDetections(samples, by_exit)


def coco_summaries(found: ExitDetections) -> dict[str, dict]:
    """pycocotools' summary (AP, AP50, AP75, APs/m/l, AR1/10/100) of each exit's detections on the scored images."""
    if not found.samples:
        return {}
    from probe_kit.metrics.coco import METRIC_KEYS, evaluate, ground_truth_dict

    gt = ground_truth_dict(found.samples)
    return {name: {k: evaluate(gt, dets)[k] for k in METRIC_KEYS} for name, dets in found.by_exit.items()}


def _pick(samples: list) -> list:
    """One frame per difficulty (the middle one of each), or three spread frames when difficulty is unknown."""
    by_difficulty: dict[str, list] = {}
    for sample in samples:
        by_difficulty.setdefault(sample.meta.get("difficulty") or "", []).append(sample)
    if set(by_difficulty) & set(DIFFICULTIES):
        return [by_difficulty[d][len(by_difficulty[d]) // 2] for d in DIFFICULTIES if d in by_difficulty]
    step = max(1, len(samples) // 3)
    return samples[step // 2 :: step][:3]


def example_frames(found: ExitDetections) -> str | None:
    """Rows: chosen frames; columns: ground truth, then every exit's detections (score >= SCORE_CUT)."""
    if not found.samples:
        return None
    import matplotlib.pyplot as plt

    from probe_kit.report.figures import png

    frames = _pick(found.samples)
    columns = ["ground truth", *found.by_exit]
    fig, axes = plt.subplots(len(frames), len(columns), figsize=(2.6 * len(columns), 2.2 * len(frames)), squeeze=False)
    for row, sample in zip(axes, frames):
        image = sample.load_image()
        for ax, column in zip(row, columns):
            ax.imshow(image)
            if column == "ground truth":
                boxes, colour = [list(b) for b in sample.boxes], "lime"
            else:
                dets = [d for d in found.by_exit[column] if d["image_id"] == sample.image_id]
                boxes, colour = [d["bbox"] for d in dets if d["score"] >= SCORE_CUT], "red"
            for x, y, w, h in boxes:
                ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color=colour, linewidth=1))
            ax.set_xticks([])
            ax.set_yticks([])
            name = {"ground truth": "ground truth", "full": "full model"}.get(column, f"exit {column}")
            ax.set_title(f"{name} ({len(boxes)} box{'' if len(boxes) == 1 else 'es'})", fontsize=8)
        difficulty = sample.meta.get("difficulty") or ""
        row[0].set_ylabel(f"{difficulty} #{sample.image_id}".strip(), fontsize=8)
    fig.suptitle(f"Held-out frames: ground truth (green) and each exit's detections with score >= {SCORE_CUT} (red)")
    return png(fig)
