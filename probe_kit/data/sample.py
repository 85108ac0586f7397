"""The one sample type every dataset yields."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from probe_kit.data.checks import check_image_mode


@dataclass
class Sample:
    """One image with its person boxes and ignore regions, both absolute (x, y, w, h) in pixels.

    Images load lazily (``load_image``) so a dataset of thousands of frames costs no memory
    until it is iterated.
    """

    image_id: int
    file_name: str  # stable, human-readable name (e.g. "MOT17-02-FRCNN/000001.jpg")
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float
    ignore: np.ndarray  # [M, 4] float
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    _loader: Callable[[], Image.Image] | None = None

    def load_image(self) -> Image.Image:
        """The RGB image; a clear error names the file when it cannot be read."""
        if self._loader is not None:
            return self._loader()
        if self.path is None:
            raise ValueError(f"sample {self.file_name}: no image path or loader")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not decoded
                with Image.open(self.path) as im:
                    check_image_mode(self.path, im.mode)
                    return im.convert("RGB")
        except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(f"{self.path}: unreadable image ({err})") from None
