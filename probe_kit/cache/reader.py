"""Reading a feature cache lazily, one layer and token role at a time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Self

import h5py
import numpy as np

from probe_kit.cache.files import check_data, open_cache_file
from probe_kit.cache.schema import (
    ATTENTION_MAPS,
    CHECKSUMS,
    IDENTITY_ATTRS,
    METADATA_DATASETS,
    REQUIRED_ATTRS,
    TokenLayout,
    checksummed,
    layer_path,
    per_image_datasets,
    row_checksums,
)
from probe_kit.console import progress_bar
from probe_kit.data.identity import identify
from probe_kit.data.sample import Sample
from probe_kit.data.spec import DataSpec

# Bytes of float32 features one read of a trained readout may hold (``FeatureCache.rows_per_read``): what bounds the
# memory of every readout, whatever the number of images (a patch-token layer of one 512 px yolos-small image is
# 2.8 MB, so 11 images).
READ_BUDGET = 32 << 20


class FeatureCache:
    """A finished cache file, opened read-only; refuses unknown schema versions and unfinished files.

    Use as a context manager or call ``close()``.
    """

    def __init__(self, path: Path, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        self._h5 = open_cache_file(self.path, "r")
        self._reading = "layout"  # the root attribute being read, for a damaged record's error
        if "shards" in self._h5.attrs:  # HDF5 reads a missing virtual-dataset source as zeros, silently
            from probe_kit.cache.shards import shard_files

            missing = [p for p in shard_files(self._h5, self.path) if not p.is_file()]
            if missing:
                self._h5.close()
                raise ValueError(
                    f"{self.path}: shard {missing[0]} is missing; a sharded cache reads its shards beside it "
                    "(keep the folder together, or `probe-kit cache merge` it into one file)"
                )
        try:
            self._check_attributes()
            if not allow_incomplete and not self._h5.attrs["complete"]:
                raise ValueError(
                    f"{self.path}: incomplete cache ({self.num_images} of {self.num_images_total} images); rerun "
                    "`probe-kit cache` to finish it"
                )
            self.layout = TokenLayout.from_record(self._record("layout"), f"{self.path}: root attribute 'layout'")
            self.model, self.dataset, self.options, self.preprocessing = (
                self._record(name) for name in ("model", "dataset", "options", "preprocessing")
            )
            self._reading = "model or options"  # their config and tokens size every dataset
            self._check_datasets()
        except ValueError:
            self._h5.close()
            raise
        except (KeyError, TypeError, AttributeError, IndexError) as err:  # a record's fields missing or mistyped
            self._h5.close()
            raise ValueError(
                f"{self.path}: damaged cache record in root attribute {self._reading!r} ({type(err).__name__}: "
                f"{err}); re-create it"
            ) from None

    def _record(self, name: str) -> dict:
        self._reading = name
        try:
            value = json.loads(self._h5.attrs[name])
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{self.path}: root attribute {name!r} is not valid JSON ({err}); re-create the cache"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(f"{self.path}: root attribute {name!r} is not a JSON object; the cache was altered")
        return value

    def _check_attributes(self) -> None:
        """Every root attribute a cache has, and a row count within the file's size."""
        missing = [name for name in REQUIRED_ATTRS if name not in self._h5.attrs]
        if missing:
            raise ValueError(f"{self.path}: root attribute {missing[0]!r} is missing; not a whole probe_kit cache")
        for name in ("images/image_id", CHECKSUMS):
            if name not in self._h5:
                raise ValueError(f"{self.path}: dataset {name} is missing; not a whole probe_kit cache")
        written = self._h5.attrs["num_written"]
        if not isinstance(written, (int, np.integer)) or not 0 <= written <= self.num_images_total:
            raise ValueError(
                f"{self.path}: num_written is {written}, expected an integer from 0 to the "
                f"{self.num_images_total} images the file holds; the cache was altered (re-create it)"
            )
        if self._h5.attrs["complete"] and written != self.num_images_total:
            raise ValueError(
                f"{self.path}: marked complete with num_written {written} of the {self.num_images_total} images the "
                "file holds; the cache was altered (re-create it)"
            )

    def _check_datasets(self) -> None:
        """Every dataset the record promises exists with the shape and dtype the model and options imply, and the
        checksums cover exactly the computed ones; a missing, re-shaped or re-typed one is refused by name."""
        config = self.model["config"]
        maps = ATTENTION_MAPS if self.options.get("attention") else ()
        expected = per_image_datasets(
            self.layout,
            self.layers,
            self.tokens,
            self.options["dtype"],
            maps,
            int(config["hidden_size"]),
            len(config["id2label"]),
        )
        total = self.num_images_total
        for path in METADATA_DATASETS:
            data = self._h5.get(path)
            if not isinstance(data, h5py.Dataset) or data.shape[:1] != (total,):
                raise ValueError(
                    f"{self.path}: dataset {path} is missing or not one row per image; re-create the cache"
                )
        for path, shape, dtype in expected:
            try:
                data = self._h5[path]
            except KeyError:  # absent, or an external link or shard whose target is gone
                raise ValueError(f"{self.path}: dataset {path} is missing or unreadable; re-create the cache") from None
            if data.shape != (total, *shape) or data.dtype != np.dtype(dtype):
                raise ValueError(
                    f"{self.path}: {path} is {data.dtype}{list(data.shape)}, expected {dtype}{[total, *shape]} from "
                    "the cache's model and options; the cache was altered (re-create it)"
                )
        recorded = json.loads(self._h5.attrs.get("checksummed", "null"))
        if recorded != checksummed(expected) or self._h5[CHECKSUMS].shape != (total, len(recorded)):
            raise ValueError(f"{self.path}: the checksum record does not match the cache's datasets; re-create it")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    @property
    def num_images_total(self) -> int:
        return int(self._h5["images/image_id"].shape[0])

    @property
    def num_images(self) -> int:
        return int(self._h5.attrs["num_written"])

    @property
    def complete(self) -> bool:
        return bool(self._h5.attrs["complete"])

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.options["layers"])

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.options["tokens"])

    def image_hashes(self) -> list[str]:
        """sha256 (hex) of every cached image file's bytes, in cache order: what identifies an image."""
        if "images/sha256" not in self._h5:
            raise ValueError(f"{self.path}: the cache records no image hashes (images/sha256); re-create it")
        return [h.decode() for h in self._h5["images/sha256"][: self.num_images]]

    @property
    def depth(self) -> int:
        """Number of blocks of the model the cache was made with (its last layer)."""
        return int(self.model["config"]["num_hidden_layers"])

    @property
    def fingerprint(self) -> str:
        """Short hash of what makes this cache what it is (model, preprocessing, data, options)."""
        digest = hashlib.sha256("".join(self._h5.attrs.get(k, "") for k in IDENTITY_ATTRS).encode())
        return digest.hexdigest()[:16]

    def data_spec(self) -> DataSpec:
        """The dataset spec the cache was made from (reload it through ``load_dataset``, which checks it)."""
        return DataSpec.from_description(self.dataset)

    def load_dataset(self, image_ids: Collection[int] | None = None, progress: bool = False) -> list[Sample]:
        """The cache's dataset reloaded from disk, with images; refused if it is not the data the cache holds.

        Annotation files and the list of images are always compared with the cache's record; image
        bytes are hashed for ``image_ids`` only (all images by default).
        """
        spec = self.data_spec()
        samples = spec.load()
        wanted = [image_ids is None or s.image_id in image_ids for s in samples]
        check_data(self._h5, identify(spec, samples, wanted, progress), self.path)
        return samples

    def verify(self, progress: bool = False) -> None:
        """Re-hash the dataset (every annotation file and image) and read every feature and model output, which
        must be finite; a ValueError names the first difference or damaged dataset and row. An incomplete
        cache fails: what it lacks cannot be verified."""
        if not self.complete:
            raise ValueError(
                f"{self.path}: incomplete cache ({self.num_images} of {self.num_images_total} images); rerun "
                "`probe-kit cache` to finish it"
            )
        self.load_dataset(progress=progress)
        paths = json.loads(self._h5.attrs["checksummed"])
        for column, path in enumerate(progress_bar(paths, desc="verify features", unit="dataset", show=progress)):
            self._verify_rows(path, column)

    def _verify_rows(self, path: str, column: int, rows: int = 64) -> None:
        """Every row of ``path`` is finite and matches the checksum recorded when it was written."""
        data, sums = self._h5[path], self._h5[CHECKSUMS]
        for start in range(0, self.num_images, rows):
            stop = min(start + rows, self.num_images)
            values = data[start:stop]
            finite = np.isfinite(values).reshape(len(values), -1).all(1)
            if not finite.all():
                raise ValueError(f"{self.path}: {path} row {start + int(np.argmin(finite))} holds NaN or infinity")
            changed = np.flatnonzero(row_checksums(values) != sums[start:stop, column])
            if changed.size:
                raise ValueError(
                    f"{self.path}: {path} row {start + int(changed[0])} does not match the checksum recorded when it "
                    "was written (zeroed by a failed write, or altered since); re-create the cache"
                )

    def attrs(self) -> dict:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._h5.attrs.items()}

    def input_sizes(self) -> np.ndarray:
        """[N, 2] (width, height) each image was resized to."""
        return self._h5["images/input_size"][: self.num_images]

    def image_ids(self) -> np.ndarray:
        return self._h5["images/image_id"][: self.num_images]

    def samples(self) -> list[Sample]:
        """Ground truth per image as ``Sample`` objects (no image loader: the cache holds no pixels)."""
        images, gt = self._h5["images"], self._h5["gt"]
        n = self.num_images
        out = []
        for i in range(n):
            width, height = (int(v) for v in images["orig_size"][i])
            difficulty = images["difficulty"][i].decode()
            out.append(
                Sample(
                    image_id=int(images["image_id"][i]),
                    file_name=images["file_name"][i].decode(),
                    width=width,
                    height=height,
                    boxes=np.asarray(gt["boxes"][i], dtype=np.float64).reshape(-1, 4),
                    ignore=np.asarray(gt["ignore"][i], dtype=np.float64).reshape(-1, 4),
                    meta={"difficulty": difficulty} if difficulty else {},
                )
            )
        return out

    def final_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's own ``(logits [N, n_det, C+1], pred_boxes [N, n_det, 4])``."""
        n = self.num_images
        return self._h5["final/logits"][:n], self._h5["final/pred_boxes"][:n]

    @property
    def maps(self) -> tuple[str, ...]:
        """Attention maps stored (``rollout_det``, ``attn_det``) when cached with ``--attention``."""
        return ATTENTION_MAPS if self.options.get("attention") else ()

    def _dataset(self, layer: int, role: str) -> h5py.Dataset:
        if role in ATTENTION_MAPS and role not in self.maps:
            raise ValueError(f"{self.path}: no attention maps cached (re-cache with --attention)")
        if role not in self.tokens and role not in ATTENTION_MAPS:
            raise ValueError(f"{self.path}: no {role} tokens cached (tokens: {list(self.tokens)})")
        if layer not in self.layers:
            raise ValueError(f"{self.path}: layer {layer} not cached (layers: {list(self.layers)})")
        return self._h5[layer_path(layer, role)]

    def rows_per_read(self, layer: int, role: str = "det") -> int:
        """How many images of ``role`` tokens at ``layer`` fit ``READ_BUDGET`` bytes as float32 (at least one)."""
        return max(1, READ_BUDGET // (4 * int(np.prod(self.row_shape(layer, role)))))

    def row_shape(self, layer: int, role: str = "det") -> tuple[int, ...]:
        """Shape of one image's ``role`` tokens at ``layer`` (``[tokens, D]``, or an attention map's)."""
        return tuple(self._dataset(layer, role).shape[1:])

    def read(self, layer: int, role: str = "det", index: slice | np.ndarray | None = None) -> np.ndarray:
        """Hidden states ``[n, tokens, D]`` of ``layer`` for ``role`` as float32 (all images by default);
        ``role`` may also name an attention map ``[n, n_det, n_patches]``."""
        data = self._dataset(layer, role)
        if index is None:
            index = slice(0, self.num_images)
        reader = data.astype(np.float32) if data.dtype != np.float32 else data  # converted while reading
        if isinstance(index, np.ndarray):
            order = np.argsort(index, kind="stable")  # h5py needs increasing indices
            out = reader[index[order]]
            if not np.array_equal(order, np.arange(len(order))):
                out = out[np.argsort(order)]
        else:
            out = reader[index]
        self._check_finite(out, layer, role, index)
        return out

    def _check_finite(self, values: np.ndarray, layer: int, role: str, index: slice | np.ndarray) -> None:
        """Refuse features holding NaN or infinity, naming the dataset and the cache row."""
        # A row's float64 sum is finite exactly when its values are (NaN and infinity propagate, float16/32 values
        # cannot overflow it), without a boolean copy of the features.
        finite = np.isfinite(values.reshape(len(values), -1).sum(1, dtype=np.float64))
        if not finite.all():
            rows = np.arange(self.num_images)[index] if isinstance(index, slice) else np.asarray(index)
            raise ValueError(
                f"{self.path}: layers/{layer}/{role} row {int(rows[int(np.argmin(finite))])} holds NaN or infinity; "
                "the cache is damaged (re-create it with `probe-kit cache`)"
            )

    def iter_chunks(self, layer: int, role: str = "det", chunk: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, [chunk, tokens, D])`` pieces of one layer, so memory stays bounded."""
        self._dataset(layer, role)
        for start in range(0, self.num_images, chunk):
            yield start, self.read(layer, role, slice(start, min(start + chunk, self.num_images)))

    def person_index(self) -> int:
        """Index of the person class in the cached logits, from the model's ``id2label``."""
        id2label = self.model["config"]["id2label"]
        for index, label in id2label.items():
            if str(label).lower() == "person":
                return int(index)
        raise ValueError(f"{self.path}: the cached model has no 'person' label")
