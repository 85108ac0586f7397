"""Whether two caches of the same inputs agree, by the contract of docs/cache-format.md ("Equivalent caches").

Two runs over the same model, data and options (one process or several under torchrun, any thread
count, any x86-64 CPU) promise each other:

- **exactly equal**: dataset names, shapes and dtypes, every non-float dataset (image ids, file names,
  content hashes, sizes), the ground truth read from the data files, and every root attribute but
  ``created``, the shard bookkeeping and the dataset's folder (``data`` identifies the data by content);
  the per-row ``checksums`` are not compared (they are bits of the floats below);
- **equal within FLOAT32_RTOL** of the dataset's scale: everything the model computes (``final/*`` and
  ``layers/*``). Matrix-multiply reductions are summed in an order that depends on the thread count and
  the CPU's vector units, and torch does not promise bitwise equality across either. A feature stored
  as float16 may in addition sit one half-precision step away, where the two float32 values fell on
  either side of a rounding boundary.

Datasets are compared block by block of rows, so memory stays bounded by one block, not the cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from probe_kit.cache.files import open_cache_file
from probe_kit.cache.schema import CHECKSUMS

# Largest |a - b| allowed for a computed float, as a fraction of the largest |value| of its dataset.
# Measured across thread counts (1 vs 2, one process vs torchrun) on 2-core AMD EPYC and Intel
# machines: at most 2.3e-7 (tiny test model's logits) and 1.5e-7 (the reference model's), so 1e-5
# leaves a 40x margin for deeper models while a change of 1e-3 to one value still fails.
FLOAT32_RTOL = 1e-5
COMPUTED_GROUPS = ("final", "layers")  # what the model computes; everything else is read from the data
UNCOMPARED_ATTRS = frozenset({"created", "shards", "shard"})
# Per-row CRC-32s of the computed floats: bits, so they differ wherever the floats may; each cache's own
# are checked against its own rows by ``cache verify``.
UNCOMPARED_DATASETS = frozenset({CHECKSUMS})
_ROWS_PER_BLOCK = 64


def float_tolerance(reference: np.ndarray, other: np.ndarray, scale: float) -> np.ndarray:
    """Elementwise bound on ``|other - reference|`` for computed floats of a dataset whose largest
    magnitude is ``scale``: FLOAT32_RTOL x scale, plus one step of the storage type where it is float16."""
    bound = np.full(reference.shape, FLOAT32_RTOL * scale, dtype=np.float64)
    if reference.dtype == np.float16:
        larger = np.maximum(np.abs(reference), np.abs(other)).astype(np.float16)
        bound += np.spacing(larger).astype(np.float64)
    return bound


def compare_caches(ours: Path, reference: Path) -> list[str]:
    """Every way ``ours`` breaks the contract against ``reference``, one line each (empty: equivalent)."""
    with open_cache_file(Path(ours)) as a, open_cache_file(Path(reference)) as b:
        problems = _compare_attributes(a, b)
        names_a, names_b = _dataset_names(a) - UNCOMPARED_DATASETS, _dataset_names(b) - UNCOMPARED_DATASETS
        problems += [f"{name}: only in {reference}" for name in sorted(names_b - names_a)]
        problems += [f"{name}: only in {ours}" for name in sorted(names_a - names_b)]
        for name in sorted(names_a & names_b):
            problems += _compare_dataset(name, a[name], b[name])
    return problems


def _dataset_names(handle: h5py.File) -> set[str]:
    names: set[str] = set()
    handle.visititems(lambda name, obj: names.add(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _compare_attributes(a: h5py.File, b: h5py.File) -> list[str]:
    keys_a, keys_b = set(a.attrs) - UNCOMPARED_ATTRS, set(b.attrs) - UNCOMPARED_ATTRS
    problems = [f"attribute {key}: missing in one cache" for key in sorted(keys_a ^ keys_b)]
    for key in sorted(keys_a & keys_b):
        x, y = _comparable(key, a.attrs[key]), _comparable(key, b.attrs[key])
        if not np.array_equal(x, y):
            problems.append(f"attribute {key}: {x!r} vs {y!r}")
    return problems


def _comparable(key: str, value: object) -> object:
    """``dataset`` without its ``path``: the same data in another folder is the same data (``data`` holds the
    sha256 of every image and annotation file, and is compared exactly)."""
    if key != "dataset":
        return value
    try:
        record = json.loads(value)
    except (TypeError, ValueError):
        return value
    return (
        json.dumps({k: v for k, v in record.items() if k != "path"}, sort_keys=True)
        if isinstance(record, dict)
        else value
    )


def _compare_dataset(name: str, a: h5py.Dataset, b: h5py.Dataset) -> list[str]:
    if a.shape != b.shape or a.dtype != b.dtype:
        return [f"{name}: shape {a.shape} {a.dtype} vs {b.shape} {b.dtype}"]
    computed = name.split("/")[0] in COMPUTED_GROUPS and b.dtype.kind == "f"
    scale = max((float(np.abs(block).max(initial=0.0)) for _, block in _blocks(b)), default=0.0) if computed else 0.0
    for start, want in _blocks(b):
        got = a[start : start + len(want)]
        if b.dtype.kind == "O":  # ragged rows (ground truth): read from the data files, so exact
            for row, (x, y) in enumerate(zip(got, want, strict=True)):
                if not np.array_equal(x, y):
                    return [f"{name}[{start + row}]: {np.asarray(x).tolist()} vs {np.asarray(y).tolist()}"]
            continue
        problem = _first_difference(name, start, got, want, scale if computed else None)
        if problem:
            return [problem]
    return []


def _blocks(dataset: h5py.Dataset) -> Iterator[tuple[int, np.ndarray]]:
    if dataset.shape == ():
        yield 0, dataset[()][None]
        return
    for start in range(0, len(dataset), _ROWS_PER_BLOCK):
        yield start, dataset[start : start + _ROWS_PER_BLOCK]


def _first_difference(name: str, start: int, got: np.ndarray, want: np.ndarray, scale: float | None) -> str | None:
    """The first element outside the contract (``scale`` None: exact), as one line, or None."""
    if scale is None:
        bad = got != want
    else:
        finite = np.isfinite(got) & np.isfinite(want)
        gap = np.abs(got.astype(np.float64) - want.astype(np.float64))
        bad = np.where(finite, gap > float_tolerance(want, got, scale), ~np.isclose(got, want, equal_nan=True))
    if not bad.any():
        return None
    index = np.argwhere(bad)[0]
    where = ", ".join(str(int(i)) for i in (index[0] + start, *index[1:]))
    x, y = got[tuple(index)], want[tuple(index)]
    allowed = "" if scale is None else f" (allowed {float(float_tolerance(want, got, scale)[tuple(index)]):.2g})"
    rows = f"rows {start}-{start + len(want) - 1}"
    return f"{name}[{where}]: {x!r} vs {y!r}{allowed}; {int(bad.sum())} elements differ in {rows}"
