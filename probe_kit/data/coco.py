"""COCO-format JSON + image folder, filtered to chosen categories (default: person).

``iscrowd: 1`` annotations become ignore regions, as COCOeval treats them; images without
annotations stay in (negatives matter for false positives).

``check_coco`` is the one validator of a COCO ground-truth dict, used here and by the metrics:
every record, id and number is checked (finite, in range, ids unique and resolvable) and anything
else is refused with one line naming the file and the field, e.g. ``gt.json: images[3].width``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from probe_kit.data.checks import (
    InputError,
    check_box_extent,
    check_image_size,
    clip_to_image,
    far_from_image,
    is_integral,
    json_box,
    json_field,
    json_list,
    json_number,
    json_record,
    numeric_table,
    short,
)
from probe_kit.data.sample import Sample
from probe_kit.io import read_json

MAX_SIDE = 100_000  # pixels; larger "images" are a unit mistake


def _default_image_dir(annotations: Path) -> Path:
    beside = annotations.parent
    return beside / "images" if (beside / "images").is_dir() else beside


def check_coco(data: Any, where: str) -> dict:
    """A validated, normalised copy of a COCO ground-truth dict.

    Returns ``{"images": [{id, width, height, file_name?}], "annotations": [{id, image_id,
    category_id, bbox, area, iscrowd}], "categories": [{id, name?}]}`` with Python ints and floats.
    Annotation ids are renumbered 1..N (pycocotools treats id 0 as "unmatched").
    """
    data = json_record(data, where)
    tables = {
        key: json_list(json_field(data, key, f"{where}: {key}", "a list"), f"{where}: {key}") for key in _TOP_LEVEL
    }
    categories = [_category(c, f"{where}: categories[{i}]") for i, c in enumerate(tables["categories"])]
    images: dict[int, dict] = {}
    for i, record in enumerate(tables["images"]):
        image = _image(record, f"{where}: images[{i}]")
        if image["id"] in images:
            raise InputError(f"{where}: images[{i}].id", "ids that are unique", short(image["id"]))
        images[image["id"]] = image
    annotations = _fast_annotations(tables["annotations"], images)
    if annotations is None:
        annotations = [
            _annotation(a, f"{where}: annotations[{i}]", images, i + 1) for i, a in enumerate(tables["annotations"])
        ]
    return {"images": list(images.values()), "annotations": annotations, "categories": categories}


_TOP_LEVEL = ("images", "annotations", "categories")


def _integer(record: dict, key: str, where: str, **limits) -> int:
    return json_number(
        json_field(record, key, f"{where}.{key}", "an integer"), f"{where}.{key}", integer=True, **limits
    )


def _category(value: Any, where: str) -> dict:
    record = json_record(value, where)
    out = {"id": _integer(record, "id", where)}
    if "name" in record:
        if not isinstance(record["name"], str):
            raise InputError(f"{where}.name", "a string", short(record["name"]))
        out["name"] = record["name"]
    return out


def _image(value: Any, where: str) -> dict:
    record = json_record(value, where)
    out = {
        "id": _integer(record, "id", where),
        "width": _integer(record, "width", where, lo=1, hi=MAX_SIDE),
        "height": _integer(record, "height", where, lo=1, hi=MAX_SIDE),
    }
    if "file_name" in record:
        name = record["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}.file_name", "a non-empty string", short(name))
        out["file_name"] = name
    return out


def _annotation(value: Any, where: str, images: dict[int, dict], new_id: int) -> dict:
    record = json_record(value, where)
    image_id = _integer(record, "image_id", where)
    if image_id not in images:
        raise InputError(f"{where}.image_id", "the id of an entry in images", short(image_id))
    bbox = json_box(json_field(record, "bbox", f"{where}.bbox", "[x, y, width, height]"), f"{where}.bbox")
    image = images[image_id]
    check_box_extent(bbox, image["width"], image["height"], f"{where}.bbox")
    area = record.get("area", bbox[2] * bbox[3])
    return {
        "id": new_id,
        "image_id": image_id,
        "category_id": _integer(record, "category_id", where),
        "bbox": list(bbox),
        "area": json_number(area, f"{where}.area", lo=0),
        "iscrowd": int(json_number(record.get("iscrowd", 0), f"{where}.iscrowd", lo=0, hi=1, integer=True)),
    }


def _fast_annotations(annotations: list, images: dict[int, dict]) -> list[dict] | None:
    """``_annotation`` for a valid list in one vectorised pass (what ``ground_truth_dict`` writes: area included)."""
    try:
        rows = [(a["image_id"], a["category_id"], *a["bbox"], a.get("iscrowd", 0), a["area"]) for a in annotations]
    except (TypeError, KeyError):
        return None
    table = numeric_table(rows, 8)
    if table is None or not np.isfinite(table).all() or not is_integral(table[:, [0, 1, 6]]).all():
        return None
    if (table[:, 4:6] < 0).any() or (table[:, 7] < 0).any() or not np.isin(table[:, 6], (0, 1)).all():
        return None
    try:
        sizes = np.array([(images[int(i)]["width"], images[int(i)]["height"]) for i in table[:, 0]]).reshape(-1, 2)
    except KeyError:
        return None
    if far_from_image(table[:, 2:6], sizes[:, 0], sizes[:, 1]).any():
        return None
    return [
        {"id": n, "image_id": int(r[0]), "category_id": int(r[1]), "bbox": r[2:6], "area": r[7], "iscrowd": int(r[6])}
        for n, r in enumerate(table.tolist(), start=1)
    ]


def load_coco(
    annotations: Path, images_dir: Path | None = None, categories: tuple[str, ...] = ("person",)
) -> list[Sample]:
    """Samples of a COCO JSON; boxes of ``categories`` only (absolute xywh, clipped to the image)."""
    annotations = Path(annotations)
    coco = check_coco(read_json(annotations, "COCO annotations"), str(annotations))
    wanted = {c["id"] for c in coco["categories"] if c.get("name") in categories}
    if not wanted:
        names = sorted(str(c.get("name")) for c in coco["categories"])
        raise InputError(f"{annotations}: categories", f"a category named {' or '.join(categories)}", short(names))
    images_dir = Path(images_dir) if images_dir else _default_image_dir(annotations)
    boxes: dict[int, list] = {img["id"]: [] for img in coco["images"]}
    ignore: dict[int, list] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] in wanted:
            (ignore if ann["iscrowd"] else boxes)[ann["image_id"]].append(ann["bbox"])
    samples = []
    for index, img in enumerate(coco["images"]):
        if "file_name" not in img:
            raise InputError(
                f"{annotations}: images[{index}].file_name", "a file name", "nothing (the field is missing)"
            )
        path = images_dir / img["file_name"]
        if path.is_file():  # absent images are named when loaded; ground truth alone (export-coco) needs none
            check_image_size(path, img["width"], img["height"], f"{annotations}: images[{index}]")
        samples.append(
            Sample(
                image_id=img["id"],
                file_name=img["file_name"],
                width=img["width"],
                height=img["height"],
                boxes=clip_to_image(boxes[img["id"]], img["width"], img["height"]),
                ignore=clip_to_image(ignore[img["id"]], img["width"], img["height"]),
                path=path,
            )
        )
    return samples
