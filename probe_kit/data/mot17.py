"""MOT17 in its original layout: ``ROOT/train/MOT17-02-FRCNN/{seqinfo.ini, img1/, gt/gt.txt}``.

Also reads our synthetic scenes, which are written in the same layout.

Semantics (TrackEval, ``mot_challenge_2d_box.py``): a person is class 1 with consider-flag 1.
Classes 2, 7, 8, 12 (person on vehicle, static person, distractor, reflection) become ignore
regions, so detections on them count neither as true nor as false positives. A class-1 box with
flag 0, or below ``min_visibility``, is also an ignore region rather than a missed person.
Other classes (vehicles, occluders) are dropped. Boxes are converted from 1-based to 0-based
pixels and clipped to the image.
"""

from __future__ import annotations

import configparser
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe_kit.data.sample import Sample
from probe_kit.ops.boxes import clip_xywh

PERSON_CLASS = 1
IGNORE_CLASSES = frozenset({2, 7, 8, 12})
DETECTORS = ("FRCNN", "DPM", "SDP")
SPLITS = ("first-half", "second-half")
_IDS_PER_SEQUENCE = 100_000


@dataclass(frozen=True)
class SequenceInfo:
    name: str
    path: Path
    length: int
    width: int
    height: int
    image_dir: str
    image_ext: str


def read_seqinfo(seq_dir: Path) -> SequenceInfo:
    """Parse ``seqinfo.ini``; a missing file or key is a one-line error naming it."""
    path = seq_dir / "seqinfo.ini"
    if not path.is_file():
        raise ValueError(f"{path}: missing (every MOT17 sequence folder needs seqinfo.ini)")
    parser = configparser.ConfigParser()
    parser.read(path)
    try:
        section = parser["Sequence"]
        return SequenceInfo(
            name=seq_dir.name,
            path=seq_dir,
            length=int(section["seqLength"]),
            width=int(section["imWidth"]),
            height=int(section["imHeight"]),
            image_dir=section.get("imDir", "img1"),
            image_ext=section.get("imExt", ".jpg"),
        )
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: missing or malformed key {err} in [Sequence]") from err


def _base_name(name: str) -> str:
    for detector in DETECTORS:
        if name.endswith(f"-{detector}"):
            return name[: -len(detector) - 1]
    return name


def sequence_matches(name: str, token: str) -> bool:
    """Whether ``token`` names sequence ``name``: in full (``MOT17-02-FRCNN``), base (``MOT17-02``) or number (``02``)."""
    base = _base_name(name)
    return token in (name, base) or base.endswith(f"-{token}")


def list_sequences(root: Path, detector: str = "FRCNN") -> list[Path]:
    """Sequence folders under ``root/train``, one copy per sequence (MOT17's detector copies share gt)."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise ValueError(f"{root}: expected MOT17 layout with a train/ folder")
    if detector not in DETECTORS:
        raise ValueError(f"detector: expected one of {DETECTORS}, got {detector!r}")
    folders = sorted(p for p in train.iterdir() if p.is_dir())
    chosen = []
    for folder in folders:
        has_copies = _base_name(folder.name) != folder.name
        if not has_copies or folder.name.endswith(f"-{detector}"):
            chosen.append(folder)
    return chosen


def select_sequences(folders: list[Path], wanted: list[str] | None) -> list[Path]:
    """Pick sequences by full name (``MOT17-02-FRCNN``), base name (``MOT17-02``) or number (``02``)."""
    if not wanted:
        return folders
    picked = []
    for token in wanted:
        matches = [f for f in folders if sequence_matches(f.name, token)]
        if not matches:
            names = ", ".join(f.name for f in folders) or "none"
            raise ValueError(f"unknown sequence {token!r}; available: {names}")
        picked += [m for m in matches if m not in picked]
    return picked


def read_gt(path: Path) -> dict[int, list[tuple[float, ...]]]:
    """Rows of ``gt.txt`` grouped by frame: ``(left, top, width, height, flag, class, visibility)``."""
    if not path.is_file():
        raise ValueError(f"{path}: missing ground truth")
    by_frame: dict[int, list[tuple[float, ...]]] = defaultdict(list)
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            try:
                if len(fields) < 9:
                    raise ValueError(f"{len(fields)} fields")
                frame = int(float(fields[0]))
                values = tuple(float(v) for v in fields[2:9])  # float() reads 2.6772e-05 too
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: malformed row {line.strip()!r}; expected "
                    "frame,id,left,top,width,height,flag,class,visibility"
                ) from None
            by_frame[frame].append(values)
    return by_frame


def load_sequence(
    seq_dir: Path,
    sequence_id: int,
    split: str | None = None,
    min_visibility: float = 0.0,
    stride: int = 1,
) -> list[Sample]:
    """Samples of one sequence, one per frame whose image file exists (slices may hold fewer)."""
    info = read_seqinfo(seq_dir)
    gt = read_gt(seq_dir / "gt" / "gt.txt")
    difficulty = _read_difficulty(seq_dir / "difficulty.txt")
    frames = range(1, info.length + 1)
    if split == "first-half":
        frames = range(1, info.length // 2 + 1)
    elif split == "second-half":
        frames = range(info.length // 2 + 1, info.length + 1)
    elif split is not None:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    samples = []
    for frame in frames[::stride]:
        image_path = seq_dir / info.image_dir / f"{frame:06d}{info.image_ext}"
        if not image_path.is_file():
            continue
        boxes, ignore = _split_rows(gt.get(frame, []), min_visibility)
        meta = {"sequence": info.name, "frame": frame}
        if frame in difficulty:
            meta["difficulty"] = difficulty[frame]
        samples.append(
            Sample(
                image_id=sequence_id * _IDS_PER_SEQUENCE + frame,
                file_name=f"{info.name}/{frame:06d}{info.image_ext}",
                width=info.width,
                height=info.height,
                boxes=_to_image(boxes, info),
                ignore=_to_image(ignore, info),
                meta=meta,
                path=image_path,
            )
        )
    return samples


def _split_rows(rows: list[tuple[float, ...]], min_visibility: float) -> tuple[list, list]:
    boxes, ignore = [], []
    for left, top, width, height, flag, cls, visibility in rows:
        box = (left - 1.0, top - 1.0, width, height)  # MOT17 pixels are 1-based
        if cls == PERSON_CLASS and flag == 1 and visibility >= min_visibility:
            boxes.append(box)
        elif cls == PERSON_CLASS or cls in IGNORE_CLASSES:
            ignore.append(box)
    return boxes, ignore


def _to_image(boxes: list, info: SequenceInfo) -> np.ndarray:
    clipped = clip_xywh(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), info.width, info.height)
    return clipped[(clipped[:, 2] > 0) & (clipped[:, 3] > 0)]


def _read_difficulty(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            frame, label = line.split(",")
            out[int(frame)] = label.strip()
    return out


def load_mot17(
    root: Path,
    sequences: list[str] | None = None,
    detector: str = "FRCNN",
    split: str | None = None,
    min_visibility: float = 0.0,
    stride: int = 1,
) -> list[Sample]:
    """All frames with images of the chosen sequences; image ids stay stable across selections."""
    if stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride}")
    folders = list_sequences(root, detector)
    ordinal = {f: i + 1 for i, f in enumerate(folders)}
    samples = []
    for folder in select_sequences(folders, sequences):
        samples += load_sequence(folder, ordinal[folder], split, min_visibility, stride)
    return samples
