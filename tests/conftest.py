"""Shared fixtures: tiny random YOLOS checkpoints saved and loaded through the real path, synthetic scenes."""

from __future__ import annotations

import os
from pathlib import Path

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
