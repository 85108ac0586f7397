"""Shared fixtures: tiny random YOLOS checkpoints saved and loaded through the real path, synthetic scenes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# No test may reach the network: the hub is offline for the whole session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def real_data(sub: str) -> Path:
    """A path under ../shared/data/real, or skip: users' clones have no ../shared."""
    path = REAL_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available: {path} (only present in the project workspace)")
    return path


# Results (losses, AP) computed in two processes with different thread counts, e.g. a torchrun rank
# (OMP_NUM_THREADS=1) against the test process: float32 sums in another order, so equal within this
# relative tolerance, not bit for bit (docs/cache-format.md, "Equivalent caches"). Integers, strings,
# image ids and exit histograms stay exact.
ACROSS_THREADS_RTOL = 1e-4


def assert_same_results(got, want, where: str = "result") -> None:
    """Nested JSON-like ``got`` equals ``want``: floats within ``ACROSS_THREADS_RTOL``, everything else exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same_results(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_results(a, b, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=ACROSS_THREADS_RTOL, abs=1e-12), where
    else:
        assert got == want, where


def make_tiny_yolos(
    folder: Path,
    *,
    layers: int = 4,
    mid_position: bool = True,
    image: int = 64,
    seed: int = 0,
    det_tokens: int = 5,
    labels: dict | None = None,
) -> Path:
    """Save a tiny random YOLOS + processor with seeded (non-zero) tokens and position embeddings."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    from probe_kit.models.loading import seed_token_embeddings

    labels = labels or {0: "person"}
    torch.manual_seed(seed)
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[image, image],
        num_detection_tokens=det_tokens,
        use_mid_position_embeddings=mid_position,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    model = YolosForObjectDetection(config)
    seed_token_embeddings(model, seed)
    model.save_pretrained(folder)
    YolosImageProcessorPil(size={"shortest_edge": image, "longest_edge": image}).save_pretrained(folder)
    return folder


def write_tiny_cache(model: Path, synth_dir: Path, out: Path, layers="all", tokens=("det",), **options) -> Path:
    """A feature cache of ``model`` over the synthetic scenes, batches of 4, no progress bar."""
    from probe_kit.cache.writer import write_cache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.models.loading import ModelSpec

    options.setdefault("batch_size", 4)
    return write_cache(
        ModelSpec(str(model)),
        parse_data_spec(f"synth:{synth_dir}"),
        layers,
        list(tokens),
        out,
        progress=False,
        **options,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_yolos(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from probe_kit.data.synth import write_synth_dataset

    out = tmp_path_factory.mktemp("synth") / "scenes"
    write_synth_dataset(out, frames=12, seed=3, frames_per_sequence=5, progress=False)
    return out


def write_cache_by_hand(
    path: Path,
    layout,
    dim: int,
    boxes: np.ndarray,
    features: dict[str, object],
    size: int,
    images_per_sequence: int,
    dtype: str = "float32",
) -> Path:
    """A complete schema-current cache written without a model, for readouts on features of a known structure.

    ``boxes``: one person box (x, y, w, h, pixels) per image of ``size`` x ``size``; ``features``: layer-1 datasets
    by token role, each an array ``[n, tokens, dim]`` or a function ``(start, stop) -> rows`` written in blocks.
    """
    import json

    import h5py

    from probe_kit.cache.schema import CHECKSUMS, SCHEMA_VERSION, layer_path, row_checksums

    n = len(boxes)
    config = {"num_hidden_layers": 1, "hidden_size": dim, "id2label": {"0": "person"}}
    options = {"layers": [1], "tokens": list(features), "dtype": dtype, "batch_size": 1}
    computed = {
        "final/logits": np.zeros((n, layout.num_det, 2), np.float32),
        "final/pred_boxes": np.full((n, layout.num_det, 4), 0.5, np.float32),
    }
    strings = h5py.string_dtype()
    with h5py.File(path, "w") as h5:
        h5.attrs.update(
            {
                "schema_version": SCHEMA_VERSION,
                "complete": True,
                "num_written": n,
                "layout": layout.to_json(),
                "model": json.dumps({"name": "none", "revision": None, "fingerprint": "x", "config": config}),
                "dataset": json.dumps({"kind": "synth"}),
                "data": "{}",
                "preprocessing": "{}",
                "versions": "{}",
                "created": "",
                "options": json.dumps(options),
            }
        )
        names = [f"SEQ-{i // images_per_sequence:02d}/{i:06d}.jpg" for i in range(n)]
        h5["images/image_id"] = np.arange(1, n + 1)
        h5["images/file_name"] = np.array(names, dtype=object).astype(strings)
        h5["images/sha256"] = np.array([f"{i:064x}" for i in range(n)], dtype="S64")
        h5["images/orig_size"] = np.full((n, 2), size, dtype=np.int32)
        h5["images/input_size"] = np.full((n, 2), size, dtype=np.int32)
        h5["images/difficulty"] = np.array([""] * n, dtype=object).astype(strings)
        for name, values in (("gt/boxes", boxes.astype(np.float32)), ("gt/ignore", np.zeros((n, 0), np.float32))):
            data = h5.create_dataset(name, (n,), dtype=h5py.vlen_dtype(np.float32))
            for i in range(n):
                data[i] = values[i].ravel()
        sums = np.zeros((n, len(computed) + len(features)), dtype=np.uint32)
        for column, (name, values) in enumerate(computed.items()):
            h5[name] = values
            sums[:, column] = row_checksums(values)
        for column, (role, rows) in enumerate(features.items(), start=len(computed)):
            tokens = layout.count(role)
            data = h5.create_dataset(layer_path(1, role), (n, tokens, dim), dtype=dtype, chunks=(4, tokens, dim))
            for start in range(0, n, 100):
                stop = min(n, start + 100)
                block = (rows(start, stop) if callable(rows) else rows[start:stop]).astype(dtype)
                data[start:stop] = block
                sums[start:stop, column] = row_checksums(block)
        h5.attrs["checksummed"] = json.dumps([*computed, *(layer_path(1, role) for role in features)])
        h5[CHECKSUMS] = sums
    return path
