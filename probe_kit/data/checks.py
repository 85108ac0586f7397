"""Refusals for the numbers and records that users feed the data and metrics layers.

Every loader turns a raw value (a field of a text file, a JSON value, an option) into a finite
number in its range through these helpers, or raises ``InputError``: a ``ValueError`` whose
message is one line naming where the value came from (``file:line: field``, ``file: images[3].width``
or ``--option``) and what was expected. ``float()`` alone accepts ``nan``, ``inf`` and ``1e400``;
``json`` accepts ``NaN`` and ``Infinity`` tokens; both are refused here.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from probe_kit.errors import UserError, short

# A box edge further than one image size beyond the frame is a unit or column mistake, not a person
# partly out of view: MOT17's real boxes reach at most 0.25 image widths past the edges.
BOX_MARGIN = 1.0


class InputError(UserError):
    """A value in a user's file or option that probe_kit refuses; ``str()`` is one line."""

    def __init__(self, where: str, expected: str, got: str | None = None) -> None:
        super().__init__(f"{where}: expected {expected}" + (f", got {got}" if got is not None else ""))

    @classmethod
    def saying(cls, message: str) -> InputError:
        """An ``InputError`` with a message of its own (one line) instead of "expected ..."."""
        err = cls.__new__(cls)
        ValueError.__init__(err, " ".join(message.split()))
        return err


def _range_text(lo: float | None, hi: float | None, lo_open: bool, integer: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{kind} <= {hi:g}"
    return kind


def _in_range(
    x: float, where: str, raw: Any, lo: float | None, hi: float | None, lo_open: bool, integer: bool
) -> float:
    ok = math.isfinite(x) and (not integer or x == int(x))
    ok = ok and (lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or x <= hi)
    if not ok:
        raise InputError(where, _range_text(lo, hi, lo_open, integer), short(raw))
    return x


def parse_number(
    text: str,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    integer: bool = False,
) -> float:
    """A number written as text (``"12"``, ``"2.6e-05"``); ``integer`` allows ``"3.0"`` and returns an int."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise InputError(where, _range_text(lo, hi, lo_open, integer), short(text)) from None
    x = _in_range(x, where, text, lo, hi, lo_open, integer)
    return int(x) if integer else x


def json_number(
    value: Any,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    integer: bool = False,
) -> float:
    """A JSON (or numpy) number, not a string, bool or null; ``integer`` returns an int."""
    expected = _range_text(lo, hi, lo_open, integer)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(where, expected, short(value))
    try:
        x = float(value)  # a 400-digit JSON integer overflows here
    except OverflowError:
        raise InputError(where, expected, short(value)) from None
    _in_range(x, where, value, lo, hi, lo_open, integer)
    return int(value) if integer else x  # int() of a huge integral float stays exact


def numeric_table(rows: list[tuple], width: int) -> np.ndarray | None:
    """``[N, width]`` float64 of ``rows`` when every value is a real number (no bool, str, None), else None.

    The fast path of the record checkers: one vectorised check for the common, valid case; when it
    returns None or flags a row, the per-field checks run to name the first bad value.
    """
    if any(len(row) != width for row in rows):
        return None
    types = {type(v) for row in rows for v in row}
    if not all(issubclass(t, numbers.Real) and not issubclass(t, (bool, np.bool_)) for t in types):
        return None
    try:
        return np.array(rows, dtype=np.float64).reshape(-1, width)
    except OverflowError:  # a 400-digit integer
        return None


def is_integral(values: np.ndarray) -> np.ndarray:
    """Elementwise: finite and a whole number."""
    return np.isfinite(values) & (values == np.round(values))


def json_list(value: Any, where: str) -> list:
    """A JSON array (a dict or string where a list belongs is refused)."""
    if not isinstance(value, list):
        raise InputError(where, "a list [...]", f"a {type(value).__name__}")
    return value


def json_record(value: Any, where: str) -> dict:
    """A JSON object."""
    if not isinstance(value, dict):
        raise InputError(where, "an object {...}", f"a {type(value).__name__}")
    return value


def json_field(record: dict, key: str, where: str, expected: str = "a value") -> Any:
    """``record[key]``; when absent, refused with ``where`` (the field's own name) and what was expected."""
    if key not in record:
        raise InputError(where, expected, "nothing (the field is missing)")
    return record[key]


def json_box(value: Any, where: str) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, width, height]``: four finite numbers, width and height >= 0."""
    if not isinstance(value, list) or len(value) != 4:
        raise InputError(where, "[x, y, width, height] (a list of 4 numbers)", short(value))
    x, y = (json_number(v, where) for v in value[:2])
    w, h = (json_number(v, where, lo=0) for v in value[2:])
    return x, y, w, h


def far_from_image(boxes: np.ndarray, width: float | np.ndarray, height: float | np.ndarray) -> np.ndarray:
    """``[N]`` bool: ``[N, 4]`` xywh boxes reaching more than ``BOX_MARGIN`` image sizes beyond their frame
    (``width``, ``height``: one size or ``[N]``)."""
    x, y, w, h = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).T
    mx, my = BOX_MARGIN * width, BOX_MARGIN * height
    return (x < -mx) | (y < -my) | (x + w > width + mx) | (y + h > height + my)


def check_box_extent(box: tuple[float, ...], width: int, height: int, where: str) -> None:
    """Refuse one ``(x, y, w, h)`` box that ``far_from_image`` flags."""
    if far_from_image(np.asarray(box), width, height)[0]:
        expected = f"a box within {BOX_MARGIN:g} image size of the {width}x{height} frame"
        raise InputError(where, expected, short([float(v) for v in box]))


def clip_to_image(boxes: list, width: int, height: int) -> np.ndarray:
    """``[N, 4]`` xywh boxes clipped to the image; boxes left with no area (wholly outside) are dropped."""
    from probe_kit.ops.boxes import clip_xywh  # here: ops.boxes imports torch, which option parsing must not

    clipped = clip_xywh(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), width, height)
    return clipped[(clipped[:, 2] > 0) & (clipped[:, 3] > 0)]


# Pillow modes that convert to RGB without losing the picture: 8 bits per channel, a palette, CMYK or YCbCr.
# 16-bit and float modes ("I;16", "I", "F") are clipped at 255 by ``convert("RGB")``: a white frame.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


def check_image_mode(path: Path | str, mode: str) -> None:
    """Refuse an image whose pixels would not survive the conversion to 8-bit RGB (a 16-bit PNG, a float TIFF)."""
    if mode not in EIGHT_BIT_MODES:
        raise InputError(str(path), "an 8-bit image (RGB, greyscale, palette or CMYK)", f"Pillow mode {mode!r}")


def check_image_size(path: Path, width: int, height: int, declared_by: str) -> None:
    """Refuse an image whose header size differs from what ``declared_by`` says (PIL reads the header only).

    Measured on the real MOT17 excerpt: 1.3 ms for all 31 frames (0.04 ms each, warm file cache) against
    25-75 ms to decode one frame, so every frame is checked, not a sample.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError.saying(f"{path}: unreadable image ({err or type(err).__name__})") from None
    check_image_mode(path, mode)
    if size != (width, height):
        raise InputError(str(path), f"the size {width}x{height} that {declared_by} declares", f"{size[0]}x{size[1]}")
