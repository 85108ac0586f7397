"""The HDF5 feature-cache schema, in one place (documented in docs/cache-format.md).

Layout of a cache file::

    /                     attrs: schema_version, model, preprocessing, dataset, data, options,
                                 versions, created, complete, num_written, layout, skipped_frames
                                 (per sequence, how many frames seqinfo.ini lists have no image file)
    /images/image_id      [N] int64
    /images/file_name     [N] str
    /images/sha256        [N] 64-byte ascii: sha256 of each image file's bytes
    /images/orig_size     [N, 2] int32 (width, height)
    /images/input_size    [N, 2] int32 (width, height) after the processor's resize
    /images/difficulty    [N] str ("" where the dataset has none)
    /gt/boxes             [N] ragged float32, flattened absolute x, y, w, h
    /gt/ignore            [N] ragged float32, ignore regions, same format
    /final/logits         [N, n_det, C+1] float32: the model's own class logits
    /final/pred_boxes     [N, n_det, 4] float32: its boxes (normalised cx, cy, w, h)
    /layers/<k>/<role>    [N, n_tokens(role), D] hidden state of layer k, role in det|patch|cls
    /layers/<k>/rollout_det, attn_det  [N, n_det, n_patches] with --attention (options record
                          head_fusion and discard_ratio)
    /checksums            [N, len(CHECKSUMMED)] uint32: CRC-32 of each image's row of every dataset the
                          root attribute ``checksummed`` lists (``final/*`` and ``layers/*``), as written

Layer ``k`` is transformers' ``hidden_states[k]``: 0 = embeddings, k >= 1 = raw output of block
k, *before* yolos-small's mid position embedding is added and before any LayerNorm (the head
path applies ``vit.layernorm``). Token order in YOLOS is ``[CLS, patches..., DET x n_det]``;
``layout`` records each role's slice explicitly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

# 2: the identity covers the data (``data`` attribute, ``images/sha256``)
# 3: per-row checksums of every feature and model output (``checksums``, ``checksummed``)
SCHEMA_VERSION = 3
TOKEN_ROLES = ("det", "patch", "cls")
# With --attention, per layer k >= 1: det-token rows over the patch columns of the rollout R_k
# and of the head-fused raw attention of block k ([N, n_det, n_patches]).
ATTENTION_MAPS = ("rollout_det", "attn_det")
FEATURE_DTYPES = ("float16", "float32")

# Root attributes that must agree before a run may append to an existing cache.
IDENTITY_ATTRS = ("model", "preprocessing", "dataset", "data", "options")
# Root attributes every cache has; a file lacking one was not written by probe_kit or was altered.
REQUIRED_ATTRS = (*IDENTITY_ATTRS, "schema_version", "layout", "versions", "created", "complete", "num_written")
CHECKSUMS = "checksums"
# Per-image records read from the data (one row per image, first dimension N).
METADATA_DATASETS = (
    "images/image_id",
    "images/file_name",
    "images/sha256",
    "images/orig_size",
    "images/difficulty",
    "gt/boxes",
    "gt/ignore",
)


def check_schema_version(value: object, path: object) -> None:
    """Refuse a ``schema_version`` attribute this probe_kit cannot read, saying why in one line."""
    if value is None:
        raise ValueError(f"{path}: an HDF5 file without a schema_version attribute, so not a probe_kit feature cache")
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not integer:  # a bad file is a user error (ValueError), not a programming one
        raise ValueError(
            f"{path}: schema_version is {value!r} ({type(value).__name__}), not an integer; probe_kit caches store "
            f"the integer {SCHEMA_VERSION}, so this file was not written by probe_kit or was altered"
        )
    if value < SCHEMA_VERSION:
        raise ValueError(
            f"{path}: cache schema version {value} was written by an older probe_kit; this one reads version "
            f"{SCHEMA_VERSION} (see docs/cache-format.md); write a new cache with `probe-kit cache`"
        )
    if value > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: cache schema version {value} was written by a newer probe_kit; this one reads version "
            f"{SCHEMA_VERSION}; upgrade probe_kit to read it"
        )


@dataclass(frozen=True)
class TokenLayout:
    """Where each token role sits in the sequence, and the patch grid."""

    num_det: int
    grid_h: int  # 0 where images of the cache have different sizes (then no patch tokens are stored)
    grid_w: int

    @property
    def num_patches(self) -> int:
        return self.grid_h * self.grid_w

    def slice_of(self, role: str) -> slice:
        """Token slice of ``role`` in ``[CLS, patches..., DET...]``; valid whatever the grid size."""
        if role == "cls":
            return slice(0, 1)
        if role == "patch":
            return slice(1, -self.num_det)
        if role == "det":
            return slice(-self.num_det, None)
        raise ValueError(f"token role: expected one of {TOKEN_ROLES}, got {role!r}")

    def count(self, role: str) -> int:
        """Number of tokens of ``role`` (patches: of the recorded grid)."""
        return {"cls": 1, "patch": self.num_patches, "det": self.num_det}[role]

    def to_json(self) -> str:
        data = asdict(self)
        data["order"] = ["cls", "patch", "det"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> TokenLayout:
        return cls.from_record(json.loads(text), "layout")

    @classmethod
    def from_record(cls, data: dict, where: str) -> TokenLayout:
        """From a parsed layout record; token counts that are not integers (positive for det tokens) are refused."""
        values = [data.get(k) for k in ("num_det", "grid_h", "grid_w")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values) or values[0] < 1:
            raise ValueError(f"{where}: expected num_det >= 1 and grid_h, grid_w >= 0 (integers), got {data}")
        return cls(*values)


def layer_path(layer: int, role: str) -> str:
    return f"layers/{layer}/{role}"


def per_image_datasets(
    layout: TokenLayout,
    layers: tuple[int, ...],
    tokens: tuple[str, ...],
    dtype: str,
    maps: tuple[str, ...],
    hidden_size: int,
    num_labels: int,
) -> list[tuple[str, tuple[int, ...], str]]:
    """``(path, shape per image, dtype)`` of every dataset written batch by batch: what the writer allocates
    and what a reader expects of a cache with this layout, options and model."""
    out = [
        ("images/input_size", (2,), "int32"),
        ("final/logits", (layout.num_det, num_labels + 1), "float32"),
        ("final/pred_boxes", (layout.num_det, 4), "float32"),
    ]
    shapes = {role: (layout.count(role), hidden_size) for role in tokens}
    for layer in layers:
        layer_maps = maps if layer > 0 else ()  # the embeddings have no attention
        for name, shape in [*shapes.items(), *((m, (layout.num_det, layout.num_patches)) for m in layer_maps)]:
            out.append((layer_path(layer, name), shape, dtype))
    return out


def checksummed(datasets: list[tuple[str, tuple[int, ...], str]]) -> list[str]:
    """The datasets a cache keeps a per-row checksum of: what the model computed (``final/*``, ``layers/*``)."""
    return [path for path, _, _ in datasets if path.split("/")[0] in ("final", "layers")]


def row_checksums(values: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (``[n, ...]`` -> ``[n]`` uint32), computed as rows are written and again by
    ``cache verify``: a block zeroed by a full disk or altered later no longer matches."""
    import zlib

    rows = np.ascontiguousarray(values).reshape(len(values), -1)
    return np.array([zlib.crc32(row.tobytes()) for row in rows], dtype=np.uint32)
