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
import hashlib
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe_kit import console
from probe_kit.data.checks import (
    InputError,
    check_box_extent,
    check_image_size,
    clip_to_image,
    far_from_image,
    json_number,
    parse_number,
    short,
)
from probe_kit.data.sample import Sample

PERSON_CLASS = 1
IGNORE_CLASSES = frozenset({2, 7, 8, 12})
DETECTORS = ("FRCNN", "DPM", "SDP")
SPLITS = ("first-half", "second-half")
_IDS_PER_SEQUENCE = 100_000
_MAX_VALUE = _IDS_PER_SEQUENCE - 1  # frame numbers and image sizes; also keeps image ids unique
# gt.txt columns and their ranges (MOTChallenge: 1-based frames, 13 classes, visibility a fraction).
_GT_FIELDS = {
    "frame": {"lo": 1, "hi": _MAX_VALUE, "integer": True},
    "id": {"integer": True},
    "left": {},
    "top": {},
    "width": {"lo": 0, "lo_open": True},
    "height": {"lo": 0, "lo_open": True},
    "flag": {"lo": 0, "hi": 1, "integer": True},
    "class": {"lo": 1, "hi": 13, "integer": True},
    "visibility": {"lo": 0, "hi": 1},
}


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
    """Parse ``seqinfo.ini``; a missing file, key or a value out of range is a one-line error naming it."""
    path = seq_dir / "seqinfo.ini"
    if not path.is_file():
        raise ValueError(f"{path}: missing (every MOT17 sequence folder needs seqinfo.ini)")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(), source=str(path))
    except (configparser.Error, UnicodeDecodeError) as err:
        raise InputError(str(path), "an INI file with a [Sequence] section", short(str(err).splitlines()[0])) from None
    if not parser.has_section("Sequence"):
        raise InputError(str(path), "a [Sequence] section", f"sections {parser.sections()}")
    section = parser["Sequence"]

    def number(key: str) -> int:
        if key not in section:
            raise InputError(f"{path}: [Sequence] {key}", "a positive integer", "nothing (the key is missing)")
        return int(parse_number(section[key], f"{path}: [Sequence] {key}", lo=1, hi=_MAX_VALUE, integer=True))

    image_dir, image_ext = section.get("imDir", "img1"), section.get("imExt", ".jpg")
    if not image_dir or Path(image_dir).is_absolute() or ".." in Path(image_dir).parts:
        raise InputError(f"{path}: [Sequence] imDir", "a folder inside the sequence folder", short(image_dir))
    if not image_ext.startswith(".") or "/" in image_ext or "\\" in image_ext:
        raise InputError(f"{path}: [Sequence] imExt", "a file extension such as .jpg", short(image_ext))
    return SequenceInfo(
        name=seq_dir.name,
        path=seq_dir,
        length=number("seqLength"),
        width=number("imWidth"),
        height=number("imHeight"),
        image_dir=image_dir,
        image_ext=image_ext,
    )


def _base_name(name: str) -> str:
    for detector in DETECTORS:
        if name.endswith(f"-{detector}"):
            return name[: -len(detector) - 1]
    return name


def sequence_number(name: str) -> int:
    """The number image ids of sequence folder ``name`` start from: the trailing number of its base name
    (``MOT17-02-FRCNN`` -> 2), else a stable hash of the name into 10000..99999. It depends on the name only,
    never on which other folders exist, so adding a sequence renumbers nothing."""
    base = _base_name(name)
    digits = len(base) - len(base.rstrip("0123456789"))
    if digits and int(base[-digits:]) < 10_000:
        return int(base[-digits:])
    return 10_000 + int(hashlib.sha256(base.encode()).hexdigest(), 16) % 90_000


def sequence_matches(name: str, token: str) -> bool:
    """Whether ``token`` names sequence ``name``: in full (``MOT17-02-FRCNN``), base (``MOT17-02``) or number."""
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
    present = sorted({f.name.rsplit("-", 1)[1] for f in folders if _base_name(f.name) != f.name})
    if not chosen and present:
        raise ValueError(
            f"{train}: no {detector} copies of the sequences, only {', '.join(present)} (e.g. {folders[0].name}); "
            f"choose one with --detector {present[0]} (YAML: detector)"
        )
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


def read_gt(path: Path, info: SequenceInfo | None = None) -> dict[int, list[tuple[float, ...]]]:
    """Rows of ``gt.txt`` grouped by frame: ``(left, top, width, height, flag, class, visibility)``.

    Every field must be a finite number in its range (size > 0, flag 0/1, class 1..13, visibility
    in [0, 1]); with ``info`` also frame <= seqLength and a box near the image. Else ``file:line``.
    """
    if not path.is_file():
        raise ValueError(f"{path}: missing ground truth")
    table = _gt_table(path)
    if info is not None:
        beyond = np.flatnonzero(table[:, 0] > info.length)
        if len(beyond):
            where = f"{path}:{_line_of(path, beyond[0])}: frame"
            raise InputError(where, f"1..{info.length} (seqLength)", short(int(table[beyond[0], 0])))
        boxes = table[:, 2:6] - [1.0, 1.0, 0.0, 0.0]  # MOT17 pixels are 1-based
        for index in np.flatnonzero(far_from_image(boxes, info.width, info.height))[:1]:
            check_box_extent(
                boxes[index], info.width, info.height, f"{path}:{_line_of(path, index)}: left,top,width,height"
            )
    by_frame: dict[int, list[tuple[float, ...]]] = defaultdict(list)
    for frame, row in zip(table[:, 0].astype(int).tolist(), table[:, 2:].tolist()):
        by_frame[frame].append(tuple(row))
    return by_frame


def _gt_table(path: Path) -> np.ndarray:
    """``[N, 9]`` float64 rows of gt.txt, every field checked against ``_GT_FIELDS``.

    numpy parses the file in one call; only when that fails or a value is out of range does the
    per-field parser walk the lines to name the first bad one (30k rows: 0.03 s instead of 0.5 s).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty gt.txt (a sequence without people) is valid
            table = np.loadtxt(path, delimiter=",", usecols=range(len(_GT_FIELDS)), ndmin=2, comments=None)
    except ValueError:
        table = None
    if table is not None and _fields_ok(table).all():
        return table
    rows = [_gt_row(line, f"{path}:{n}") for n, line in enumerate(_text_lines(path), start=1) if line.strip()]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(_GT_FIELDS))


def _fields_ok(table: np.ndarray) -> np.ndarray:
    """``[N]`` bool: every field of the row finite and within its ``_GT_FIELDS`` limits."""
    ok = np.isfinite(table).all(axis=1)
    for column, limits in enumerate(_GT_FIELDS.values()):
        values = np.nan_to_num(table[:, column])
        if limits.get("integer"):
            ok &= values == np.round(values)
        if "lo" in limits:
            ok &= values > limits["lo"] if limits.get("lo_open") else values >= limits["lo"]
        if "hi" in limits:
            ok &= values <= limits["hi"]
    return ok


def _line_of(path: Path, row: int) -> int:
    """1-based line number of the ``row``-th non-blank line."""
    numbers = (n for n, line in enumerate(_text_lines(path), start=1) if line.strip())
    return next(n for i, n in enumerate(numbers) if i == row)


def _gt_row(line: str, where: str) -> list[float]:
    """The nine numbers of one gt.txt row; the first field out of range is refused by name."""
    fields = line.strip().split(",")
    if len(fields) < len(_GT_FIELDS):
        raise InputError(where, "frame,id,left,top,width,height,flag,class,visibility", short(line.strip()))
    return [
        parse_number(text, f"{where}: {name}", **limits) for text, (name, limits) in zip(fields, _GT_FIELDS.items())
    ]


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise InputError(str(path), "a text file", f"undecodable bytes at offset {err.start}") from None


def load_sequence(
    seq_dir: Path,
    sequence_id: int,
    split: str | None = None,
    min_visibility: float = 0.0,
    stride: int = 1,
) -> list[Sample]:
    """Samples of one sequence, one per listed frame whose image file exists; the listed frames without one
    are named in a warning line (a slice of a sequence holds fewer)."""
    if split not in (None, *SPLITS):
        raise InputError("split", f"one of {SPLITS}", short(split))
    info = read_seqinfo(seq_dir)
    if not (seq_dir / info.image_dir).is_dir():  # missing, a file, or a symlink that resolves to no folder
        raise InputError(str(seq_dir / info.image_dir), "the folder of frames seqinfo.ini names (imDir)", "no folder")
    images, skipped = _frame_files(info, split, stride)
    if skipped:  # a slice of a sequence (as in our real excerpts) holds fewer frames than seqinfo.ini lists
        console.warn(
            f"{seq_dir / info.image_dir}: {len(skipped)} of the {len(images) + len(skipped)} frames that seqinfo.ini "
            f"lists{_selection_text(split, stride)} have no image file and are skipped: "
            + _frame_ranges(skipped, stride)
        )
    for path in images.values():
        if not path.is_file():  # listed, but no image can be read from it: refused, never skipped
            kind = "a dangling symlink" if path.is_symlink() and not path.exists() else "not a regular file"
            raise InputError(str(path), "an image file", kind)
    for path in images.values():  # before gt.txt: a wrong imWidth would otherwise surface as a box error
        check_image_size(path, info.width, info.height, str(info.path / "seqinfo.ini"))
    gt = read_gt(seq_dir / "gt" / "gt.txt", info)
    difficulty = _read_difficulty(seq_dir / "difficulty.txt")
    samples = []
    for frame, image_path in images.items():
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
                boxes=clip_to_image(boxes, info.width, info.height),
                ignore=clip_to_image(ignore, info.width, info.height),
                meta=meta,
                path=image_path,
            )
        )
    return samples


def _frame_files(info: SequenceInfo, split: str | None, stride: int) -> tuple[dict[int, Path], list[int]]:
    """The image file of each frame ``info`` lists (within ``split``, every ``stride``-th) that exists, and the
    listed frames that have none."""
    frames = range(1, info.length + 1)
    if split == "first-half":
        frames = range(1, info.length // 2 + 1)
    elif split == "second-half":
        frames = range(info.length // 2 + 1, info.length + 1)
    listed = {f: info.path / info.image_dir / f"{f:06d}{info.image_ext}" for f in frames[::stride]}
    images = {f: path for f, path in listed.items() if os.path.lexists(path)}
    return images, [f for f in listed if f not in images]


def _selection_text(split: str | None, stride: int) -> str:
    parts = ([split.replace("-", " ")] if split else []) + ([f"stride {stride}"] if stride > 1 else [])
    return f" ({', '.join(parts)})" if parts else ""


def _frame_ranges(frames: list[int], stride: int) -> str:
    """``000005-000600, 000700``: ascending ``frames`` as runs of consecutive listed frames (``stride`` apart)."""
    runs: list[list[int]] = []
    for frame in frames:
        if runs and frame == runs[-1][-1] + stride:
            runs[-1][-1] = frame
        else:
            runs.append([frame, frame])
    return ", ".join(f"{lo:06d}" if lo == hi else f"{lo:06d}-{hi:06d}" for lo, hi in runs)


def skipped_frames(
    root: Path, sequences: list[str] | None, detector: str, split: str | None, stride: int
) -> dict[str, int]:
    """How many listed frames each selected sequence has no image file for (the ones ``load_mot17`` skips with a
    warning); what a cache records as ``skipped_frames``."""
    counts = {}
    for folder in select_sequences(list_sequences(root, detector), sequences):
        skipped = _frame_files(read_seqinfo(folder), split, stride)[1]
        if skipped:
            counts[folder.name] = len(skipped)
    return counts


def _split_rows(rows: list[tuple[float, ...]], min_visibility: float) -> tuple[list, list]:
    boxes, ignore = [], []
    for left, top, width, height, flag, cls, visibility in rows:
        box = (left - 1.0, top - 1.0, width, height)  # MOT17 pixels are 1-based
        if cls == PERSON_CLASS and flag == 1 and visibility >= min_visibility:
            boxes.append(box)
        elif cls == PERSON_CLASS or cls in IGNORE_CLASSES:
            ignore.append(box)
    return boxes, ignore


def _read_difficulty(path: Path) -> dict[int, str]:
    """``frame,label`` lines of our synthetic scenes' difficulty.txt (absent for real MOT17)."""
    if not path.is_file():
        return {}
    out = {}
    for lineno, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        frame, sep, label = line.partition(",")
        if not sep or not label.strip():
            raise InputError(f"{path}:{lineno}", "frame,difficulty", short(line))
        out[int(parse_number(frame, f"{path}:{lineno}: frame", lo=1, integer=True))] = label.strip()
    return out


def check_selection(stride: int, min_visibility: float) -> None:
    """Refuse a stride that is not a positive integer and a visibility outside [0, 1] (NaN included)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError("stride", "a positive integer", short(stride))
    json_number(min_visibility, "min_visibility", lo=0, hi=1)


def load_mot17(
    root: Path,
    sequences: list[str] | None = None,
    detector: str = "FRCNN",
    split: str | None = None,
    min_visibility: float = 0.0,
    stride: int = 1,
) -> list[Sample]:
    """All frames with images of the chosen sequences; image ids stay stable across selections."""
    check_selection(stride, min_visibility)
    folders = list_sequences(root, detector)
    numbers: dict[int, Path] = {}
    for folder in folders:
        other = numbers.setdefault(sequence_number(folder.name), folder)
        if other != folder:
            raise ValueError(
                f"{root}/train: sequences {other.name} and {folder.name} share the number {sequence_number(other.name)}"
                ", from which image ids are made; rename one"
            )
    ids = {folder: number for number, folder in numbers.items()}
    samples = []
    for folder in select_sequences(folders, sequences):
        samples += load_sequence(folder, ids[folder], split, min_visibility, stride)
    return samples
