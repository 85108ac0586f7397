"""COCO-format JSON + image folder, filtered to chosen categories (default: person).

``iscrowd: 1`` annotations become ignore regions, as COCOeval treats them; images without
annotations stay in (negatives matter for false positives).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probe_kit.data.sample import Sample


def _default_image_dir(annotations: Path) -> Path:
    beside = annotations.parent
    return beside / "images" if (beside / "images").is_dir() else beside


def load_coco(
    annotations: Path, images_dir: Path | None = None, categories: tuple[str, ...] = ("person",)
) -> list[Sample]:
    """Samples of a COCO JSON; boxes of ``categories`` only (absolute xywh as in the file)."""
    annotations = Path(annotations)
    try:
        data = json.loads(annotations.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{annotations}: not a readable COCO JSON ({err})") from err
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{annotations}: missing top-level field {key!r}")
    wanted = {c["id"] for c in data["categories"] if c.get("name") in categories}
    if not wanted:
        names = sorted(c.get("name") for c in data["categories"])
        raise ValueError(f"{annotations}: no category named {list(categories)}; categories are {names}")
    images_dir = Path(images_dir) if images_dir else _default_image_dir(annotations)
    boxes: dict[int, list] = {img["id"]: [] for img in data["images"]}
    ignore: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for index, ann in enumerate(data["annotations"]):
        if ann.get("category_id") not in wanted:
            continue
        if "bbox" not in ann or len(ann["bbox"]) != 4:
            raise ValueError(f"{annotations}: annotations[{index}].bbox: expected [x, y, width, height]")
        if ann.get("image_id") not in boxes:
            raise ValueError(f"{annotations}: annotations[{index}].image_id {ann.get('image_id')} names no image")
        (ignore if ann.get("iscrowd", 0) else boxes)[ann["image_id"]].append(ann["bbox"])
    samples = []
    for img in data["images"]:
        samples.append(
            Sample(
                image_id=int(img["id"]),
                file_name=img["file_name"],
                width=int(img["width"]),
                height=int(img["height"]),
                boxes=np.asarray(boxes[img["id"]], dtype=np.float64).reshape(-1, 4),
                ignore=np.asarray(ignore[img["id"]], dtype=np.float64).reshape(-1, 4),
                path=images_dir / img["file_name"],
            )
        )
    return samples
