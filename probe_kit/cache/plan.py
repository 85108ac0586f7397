"""What a cache will take before it is written (``probe-kit cache --dry-run``): its size from the schema's own
dataset list, the disk it lands on, and the memory the stages that read it need.

The size is exact (the writer pre-allocates the same datasets, ``writer.image_datasets``). Memory is bounded
by design: the model's forward pass over one batch while caching, and, for every trained readout, one read of at
most ``cache.reader.READ_BUDGET`` bytes of features plus the process itself (``benchmarks/memory_growth.py``
measures those peaks; docs/real-study.md sizes the real study with them).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe_kit.cache.schema import ATTENTION_MAPS
from probe_kit.data.spec import DataSpec
from probe_kit.models.loading import ModelSpec


@dataclass(frozen=True)
class CachePlan:
    images: int
    input_size: tuple[int, int] | None  # (width, height) every image resizes to; None: several sizes
    grid: tuple[int, int]
    layers: tuple[int, ...]
    tokens: tuple[str, ...]
    dtype: str
    attention: bool
    datasets: tuple[tuple[str, tuple[int, ...], str], ...]  # per image: (path, shape, dtype)
    free_bytes: int
    where: Path

    @property
    def bytes_per_image(self) -> int:
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in self.datasets)

    @property
    def total_bytes(self) -> int:
        return self.images * self.bytes_per_image

    def largest_read_per_image(self) -> int:
        """float32 bytes of one image's largest layer dataset: what a trained readout reads per image."""
        return max(4 * int(np.prod(shape)) for path, shape, _ in self.datasets if path.startswith("layers/"))

    def lines(self) -> list[str]:
        from probe_kit.cache.reader import READ_BUDGET

        maps = f" + attention maps ({', '.join(ATTENTION_MAPS)})" if self.attention else ""
        fits = "fits" if self.total_bytes <= self.free_bytes else "DOES NOT FIT"
        return [
            f"images: {self.images}, "
            + (
                f"resized to {self.input_size[0]}x{self.input_size[1]} (patch grid {self.grid[0]}x{self.grid[1]})"
                if self.input_size
                else "resized to several sizes (det and cls tokens only: no patch grid)"
            ),
            f"cache: {len(self.layers)} layers x {','.join(self.tokens)} tokens ({self.dtype}){maps}: "
            f"{_size(self.bytes_per_image)} per image, {_size(self.total_bytes)} in all",
            f"disk: {_size(self.free_bytes)} free in {self.where}: {fits}",
            f"readouts: one image's largest layer is {_size(self.largest_read_per_image())} as float32; every trained "
            f"readout reads at most {_size(READ_BUDGET)} of features at a time, whatever the number of images",
        ]


def plan_cache(
    model_spec: ModelSpec,
    data_spec: DataSpec,
    layers: str | Sequence[int],
    tokens: Sequence[str],
    out: Path,
    dtype: str = "float16",
    attention: bool = False,
) -> CachePlan:
    """The plan of ``probe-kit cache`` with these settings: the writer's own set-up (dataset listing, model,
    options checked), without hashing the data or writing anything."""
    from probe_kit.cache.writer import image_datasets, prepare_setup

    setup = prepare_setup(model_spec, data_spec, layers, tokens, {"dtype": dtype, "attention": attention})
    datasets = image_datasets(setup.model.config, setup.options, setup.layout)
    where = Path(out).absolute().parent
    while not where.exists():
        where = where.parent
    return CachePlan(
        images=len(setup.samples),
        input_size=setup.input_size,
        grid=(setup.layout.grid_h, setup.layout.grid_w),
        layers=setup.options.layers,
        tokens=tuple(tokens),
        dtype=dtype,
        attention=attention,
        datasets=tuple(datasets),
        free_bytes=shutil.disk_usage(where).free,
        where=where,
    )


def _size(count: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} bytes"
