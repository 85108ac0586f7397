"""Synthetic street scenes: deterministic, offline stand-ins for MOT17 frames.

Every frame is rendered from ``(seed, frame index)`` alone, so any frame can be regenerated
without the others (the reference-model recipe renders its training pool in memory this way).
``write_synth_dataset`` stores frames in the MOT17 layout, so the MOT17 loader reads them.

Scenes hold upright pedestrian figures (head, torso, arms, legs in a walking pose) of varied
scale and colour over a sky/ground background with clutter: buildings, poles, bushes, cars.
Per-frame difficulty:

* ``easy``   one large, fully visible person, light clutter;
* ``medium`` two or three people, more clutter;
* ``hard``   a crowd of four to seven, overlapping, with occluders drawn in front.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from probe_kit.data.checks import InputError, json_number, short
from probe_kit.data.sample import Sample

DIFFICULTIES = ("easy", "medium", "hard")
DEFAULT_MIX = {"easy": 0.4, "medium": 0.35, "hard": 0.25}
EASY_MIX = {"easy": 1.0, "medium": 0.0, "hard": 0.0}
# Frame sizes: below 32 px a person is a few pixels; 4096 px frames already take 50 MB each in memory.
MIN_SIZE, MAX_SIZE = 32, 4096
# People less visible than this are written with consider-flag 0: ignore regions, not targets.
MIN_SCORED_VISIBILITY = 0.25

# (people min, people max, height min, height max, clutter min, clutter max, occluders max)
# Heights are fractions of the image height.
_LEVELS = {
    "easy": (1, 1, 0.45, 0.75, 1, 3, 0),
    "medium": (2, 3, 0.30, 0.60, 3, 6, 1),
    "hard": (4, 7, 0.22, 0.50, 5, 9, 3),
}


@dataclass(frozen=True)
class SceneSpec:
    """Size and difficulty mix of generated frames."""

    width: int = 256
    height: int = 256
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            json_number(getattr(self, name), name, lo=MIN_SIZE, hi=MAX_SIZE, integer=True)
        if not isinstance(self.mix, dict):
            raise InputError("mix", "difficulty weights such as easy=0.4,medium=0.35,hard=0.25", short(self.mix))
        unknown = set(self.mix) - set(DIFFICULTIES)
        if unknown:
            raise ValueError(f"mix: unknown difficulty {sorted(unknown)}; expected {DIFFICULTIES}")
        for name, weight in self.mix.items():
            json_number(weight, f"mix: {name}", lo=0)
        if sum(self.mix.values()) <= 0:
            raise ValueError(f"mix: weights must sum to a positive number, got {self.mix}")


@dataclass(frozen=True)
class Scene:
    """One rendered frame: RGB image, person boxes (absolute xywh) and their visibility."""

    image: np.ndarray  # [H, W, 3] uint8
    boxes: np.ndarray  # [N, 4] float32 absolute x, y, w, h
    visibility: np.ndarray  # [N] float32 in [0, 1]
    difficulty: str


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, size=3))


@dataclass(frozen=True)
class _Shape:
    """One PIL drawing call, kept as data so the same shape can paint the image and a mask."""

    method: str
    xy: list
    fill: tuple[int, int, int]
    options: dict = field(default_factory=dict)

    def paint(self, draw: ImageDraw.ImageDraw, fill: int | tuple[int, int, int] | None = None) -> None:
        getattr(draw, self.method)(self.xy, fill=self.fill if fill is None else fill, **self.options)


def _clutter_shapes(rng: np.random.Generator, w: int, h: int, horizon: int) -> list[_Shape]:
    kind = rng.integers(0, 4)
    colour = _colour(rng, 20, 235)
    if kind == 0:  # building with windows
        bw, bh = rng.uniform(0.1, 0.35) * w, rng.uniform(0.2, 0.5) * h
        x = rng.uniform(-0.1, 1.0) * w
        shapes = [_Shape("rectangle", [x, horizon - bh, x + bw, horizon + 2], colour)]
        for _ in range(int(rng.integers(0, 6))):
            wx, wy = x + rng.uniform(0, bw * 0.8), horizon - rng.uniform(0.1, 0.9) * bh
            shapes.append(_Shape("rectangle", [wx, wy, wx + bw * 0.12, wy + bh * 0.08], _colour(rng)))
        return shapes
    if kind == 1:  # pole or sign: tall and thin, the classic pedestrian false positive
        x, top = rng.uniform(0, w), rng.uniform(0.1, 0.5) * h
        bottom, pw = rng.uniform(max(horizon, top + 0.1 * h), h), rng.uniform(0.01, 0.03) * w
        shapes = [_Shape("rectangle", [x, top, x + pw, bottom], colour)]
        if rng.random() < 0.5:
            shapes.append(_Shape("ellipse", [x - 3 * pw, top - 3 * pw, x + 4 * pw, top + 4 * pw], _colour(rng)))
        return shapes
    if kind == 2:  # bush or tree crown
        cx, cy, r = rng.uniform(0, w), rng.uniform(horizon - 0.2 * h, h), rng.uniform(0.04, 0.12) * w
        return [_Shape("ellipse", [cx - r, cy - r, cx + r, cy + r * 0.8], colour)]
    # car
    cw, ch = rng.uniform(0.15, 0.35) * w, rng.uniform(0.06, 0.12) * h
    x, y = rng.uniform(-0.1, 1.0) * w, rng.uniform(horizon, h - ch)
    shapes = [_Shape("rounded_rectangle", [x, y, x + cw, y + ch], colour, {"radius": ch * 0.3})]
    for wheel in (x + cw * 0.2, x + cw * 0.8):
        shapes.append(_Shape("ellipse", [wheel - ch * 0.3, y + ch * 0.7, wheel + ch * 0.3, y + ch * 1.3], (20, 20, 20)))
    return shapes


def _person_shapes(rng: np.random.Generator, x: float, foot: float, ph: float) -> list[_Shape]:
    """A walking figure of height ``ph`` with its feet at ``foot``, centred on ``x``."""
    head_r = ph * 0.075
    skin = tuple(int(v) for v in np.clip(np.array([224, 172, 140]) * rng.uniform(0.45, 1.1), 0, 255))
    shirt, trousers = _colour(rng), _colour(rng, 0, 200)
    top = foot - ph
    neck, hip = top + 2 * head_r, top + ph * 0.52
    shoulder_w = ph * rng.uniform(0.11, 0.15)
    limb = max(1, int(ph * 0.06))
    stride, swing = ph * rng.uniform(0.0, 0.16), ph * rng.uniform(-0.12, 0.12)
    arm_y = neck + ph * 0.03
    return [
        _Shape("line", [(x - limb * 0.4, hip), (x - stride, foot - limb * 0.5)], trousers, {"width": limb + 1}),
        _Shape("line", [(x + limb * 0.4, hip), (x + stride, foot - limb * 0.5)], trousers, {"width": limb + 1}),
        _Shape(
            "rounded_rectangle",
            [x - shoulder_w, neck, x + shoulder_w, hip + ph * 0.04],
            shirt,
            {"radius": shoulder_w * 0.4},
        ),
        _Shape("line", [(x - shoulder_w, arm_y), (x - shoulder_w - ph * 0.04 + swing, hip)], shirt, {"width": limb}),
        _Shape("line", [(x + shoulder_w, arm_y), (x + shoulder_w + ph * 0.04 - swing, hip)], shirt, {"width": limb}),
        _Shape("ellipse", [x - head_r, top, x + head_r, top + 2 * head_r], skin),
    ]


def _mask_of(shapes: list[_Shape], w: int, h: int) -> np.ndarray:
    mask = Image.new("L", (w, h))
    draw = ImageDraw.Draw(mask)
    for shape in shapes:
        shape.paint(draw, fill=255)
    return np.asarray(mask) > 0


def render_scene(seed: int, index: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Render frame ``index`` of the scene stream ``seed``; the same inputs give the same pixels."""
    rng = _rng(seed, index)
    w, h = spec.width, spec.height
    names = list(spec.mix)
    weights = np.array([spec.mix[n] for n in names], dtype=float)
    difficulty = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    n_min, n_max, h_min, h_max, c_min, c_max, occ_max = _LEVELS[difficulty]

    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)
    horizon = int(h * rng.uniform(0.3, 0.5))
    draw.rectangle([0, 0, w, horizon], fill=_colour(rng, 120, 230))  # sky
    draw.rectangle([0, horizon, w, h], fill=_colour(rng, 60, 160))  # ground
    for _ in range(int(rng.integers(c_min, c_max + 1))):
        for shape in _clutter_shapes(rng, w, h, horizon):
            shape.paint(draw)

    n_people = int(rng.integers(n_min, n_max + 1))
    heights = rng.uniform(h_min, h_max, size=n_people) * h
    owner = np.zeros((h, w), dtype=np.int16)  # which person owns each pixel (0 = none)
    full_areas = np.zeros(n_people)
    # Painter's order: small (far) people first, so nearer ones occlude them.
    for k in np.argsort(heights):
        ph = heights[k]
        foot = horizon + (ph / h) * (h - horizon) * rng.uniform(0.9, 1.3)
        foot = float(np.clip(foot, ph + 1.0, h - 1.0))
        shapes = _person_shapes(rng, rng.uniform(0.08, 0.92) * w, foot, ph)
        for shape in shapes:
            shape.paint(draw)
        mask = _mask_of(shapes, w, h)
        full_areas[k] = mask.sum()
        owner[mask] = k + 1
    for _ in range(int(rng.integers(0, occ_max + 1))):
        shapes = _clutter_shapes(rng, w, h, horizon)
        for shape in shapes:
            shape.paint(draw)
        owner[_mask_of(shapes, w, h)] = 0

    pixels = np.asarray(image).astype(np.int16) + rng.normal(0, 6, size=(h, w, 3)).astype(np.int16)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)  # with sensor noise

    boxes, visibility = [], []
    for k in range(n_people):
        visible_mask = owner == k + 1
        if full_areas[k] == 0 or not visible_mask.any():
            continue
        # The box covers the visible pixels: with opaque occluders this ties each label to
        # evidence in the image.
        ys, xs = np.nonzero(visible_mask)
        boxes.append([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
        visibility.append(visible_mask.sum() / full_areas[k])
    return Scene(
        image=pixels,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        visibility=np.asarray(visibility, dtype=np.float32),
        difficulty=difficulty,
    )


def write_synth_dataset(
    out: Path,
    frames: int,
    seed: int,
    spec: SceneSpec = SceneSpec(),
    frames_per_sequence: int = 100,
    progress: bool = True,
) -> list[Path]:
    """Write ``frames`` scenes as MOT17-layout sequences ``out/train/SYNTH-XX``; returns their folders.

    Besides ``seqinfo.ini``, ``img1/`` and ``gt/gt.txt`` each sequence has ``difficulty.txt``
    (``frame,difficulty`` per line), which the MOT17 loader attaches to each sample's metadata.
    """
    from probe_kit.console import progress_bar

    json_number(frames, "frames", lo=1, integer=True)
    json_number(frames_per_sequence, "frames_per_sequence", lo=1, hi=99_999, integer=True)  # 6-digit names
    json_number(seed, "seed", lo=0, integer=True)
    sequences = []
    bar = progress_bar(total=frames, desc="synth scenes", unit="img", show=progress)
    for seq_no, start in enumerate(range(0, frames, frames_per_sequence), start=1):
        length = min(frames_per_sequence, frames - start)
        seq_dir = Path(out) / "train" / f"SYNTH-{seq_no:02d}"
        (seq_dir / "img1").mkdir(parents=True, exist_ok=True)
        (seq_dir / "gt").mkdir(exist_ok=True)
        gt_rows, difficulty_rows = [], []
        for frame in range(1, length + 1):
            scene = render_scene(seed, start + frame - 1, spec)
            Image.fromarray(scene.image).save(seq_dir / "img1" / f"{frame:06d}.jpg", quality=95)
            for track, (box, vis) in enumerate(zip(scene.boxes, scene.visibility), start=1):
                x, y, bw, bh = (int(v) for v in box)
                flag = int(vis >= MIN_SCORED_VISIBILITY)
                # MOT17 is 1-based: pixel column 0 is written as 1.
                gt_rows.append(f"{frame},{track},{x + 1},{y + 1},{bw},{bh},{flag},1,{vis:.4f}")
            difficulty_rows.append(f"{frame},{scene.difficulty}")
            bar.update(1)
        (seq_dir / "gt" / "gt.txt").write_text("\n".join(gt_rows) + "\n" if gt_rows else "")
        (seq_dir / "difficulty.txt").write_text("\n".join(difficulty_rows) + "\n")
        _write_seqinfo(seq_dir, length, spec)
        sequences.append(seq_dir)
    bar.close()
    return sequences


def _write_seqinfo(seq_dir: Path, length: int, spec: SceneSpec) -> None:
    info = configparser.ConfigParser()
    info.optionxform = str  # keep MOT17's camelCase keys
    info["Sequence"] = {
        "name": seq_dir.name,
        "imDir": "img1",
        "frameRate": "30",
        "seqLength": str(length),
        "imWidth": str(spec.width),
        "imHeight": str(spec.height),
        "imExt": ".jpg",
    }
    with open(seq_dir / "seqinfo.ini", "w") as fh:
        info.write(fh)


def scene_to_sample(scene: Scene, image_id: int, file_name: str) -> Sample:
    """An in-memory ``Sample``; people below ``MIN_SCORED_VISIBILITY`` become ignore regions."""
    scored = scene.visibility >= MIN_SCORED_VISIBILITY
    image = Image.fromarray(scene.image)
    return Sample(
        image_id=image_id,
        file_name=file_name,
        width=scene.image.shape[1],
        height=scene.image.shape[0],
        boxes=scene.boxes[scored],
        ignore=scene.boxes[~scored],
        meta={"difficulty": scene.difficulty},
        _loader=lambda: image,
    )
