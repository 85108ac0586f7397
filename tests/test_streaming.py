"""Trained readouts read the cache a bounded number of bytes at a time, and compute what they computed before
(issue: every stage streams). Memory itself is measured by ``benchmarks/memory_growth.py``, not here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_cache_by_hand, write_tiny_cache
from transformers.loss.loss_for_object_detection import generalized_box_iou

from probe_kit.cache import reader
from probe_kit.cache.reader import FeatureCache
from probe_kit.ops.boxes import paired_giou_xyxy
from probe_kit.training import data as training_data


def _corner_boxes(generator: torch.Generator, n: int) -> torch.Tensor:
    corner = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return torch.cat([corner, corner + 0.01 + torch.rand(n, 2, generator=generator, dtype=torch.float64)], -1)


def test_paired_giou_is_the_diagonal_of_transformers_all_pairs_giou_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    a, b = _corner_boxes(generator, 300).requires_grad_(), _corner_boxes(generator, 300)
    ours = paired_giou_xyxy(a, b)
    (grad_ours,) = torch.autograd.grad(ours.sum(), a)
    reference = torch.diag(generalized_box_iou(a, b))
    (grad_reference,) = torch.autograd.grad(reference.sum(), a)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("stream") / "c.h5", tokens=("det", "patch"))


@pytest.mark.parametrize("role", ["det", "patch"])
def test_batches_are_the_same_whether_a_block_is_read_at_once_or_a_batch_at_a_time(cache, monkeypatch, role):
    indices = np.arange(12)[::-1].copy()
    with FeatureCache(cache) as opened:
        whole = list(training_data.iter_batches(opened, 2, role, indices, 5, np.random.default_rng(3), chunk=8))
        reads = []
        original = opened.read
        monkeypatch.setattr(opened, "read", lambda *args: reads.append(len(args[2])) or original(*args))
        monkeypatch.setattr(reader, "READ_BUDGET", 1)  # not even one image fits: a batch at a time
        batched = list(training_data.iter_batches(opened, 2, role, indices, 5, np.random.default_rng(3), chunk=8))
    assert [ids.tolist() for ids, _ in whole] == [ids.tolist() for ids, _ in batched]
    for (_, x), (_, y) in zip(whole, batched, strict=True):
        assert torch.equal(x, y)
    assert max(reads) <= 5 and sum(reads) == 12  # never more than one batch in memory


def test_apply_in_chunks_reads_within_the_budget_and_gives_the_same_outputs(cache, monkeypatch):
    module = torch.nn.Linear(32, 3)
    indices = np.arange(12)
    with FeatureCache(cache) as opened:
        row_bytes = 4 * int(np.prod(opened.row_shape(2, "patch")))
        whole = training_data.apply_in_chunks(module, opened, 2, "patch", indices)
        reads = []
        original = opened.read
        monkeypatch.setattr(opened, "read", lambda *args: reads.append(len(args[2])) or original(*args))
        monkeypatch.setattr(reader, "READ_BUDGET", 5 * row_bytes)
        chunked = training_data.apply_in_chunks(module, opened, 2, "patch", indices)
    assert reads == [5, 5, 2]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def _write_wide_patch_cache(path, n=1200, grid=(24, 24), dim=64, seed=0):
    """A cache (written directly, no model) whose float32 patch layer (n x 576 x 64 x 4 = 177 MB at n=1200) is more
    than the memory the child below may add, with one person box per image covering about 40% of the grid."""
    from probe_kit.cache.schema import TokenLayout

    rng = np.random.default_rng(seed)
    boxes = np.column_stack([rng.uniform(0, 130, n), rng.uniform(0, 130, n), np.full(n, 250.0), np.full(n, 250.0)])
    patches = grid[0] * grid[1]
    rows = lambda start, stop: rng.normal(size=(stop - start, patches, dim))  # noqa: E731
    layout = TokenLayout(2, *grid)
    return write_cache_by_hand(path, layout, dim, boxes, {"patch": rows}, 384, images_per_sequence=100, dtype="float16")


# The child: imports, then caps its address space at what it holds plus 512 MiB, then trains the dense probe.
_CAPPED = """
import resource, sys
from probe_kit.analyzers import run_analyzer
import torch, sklearn, h5py  # noqa: F401 (loaded before the cap)
torch.set_num_threads(1)
held = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (held + (512 << 20), resource.RLIM_INFINITY))
result = run_analyzer("probe-dense", sys.argv[1], "1", 0, epochs=1)
print("AP50", result.layers[1]["AP50"])
"""


def test_a_dense_probe_trains_on_a_cache_larger_than_its_memory(tmp_path):
    """Before streaming this needed the whole float32 layer (354 MB) and an N x N GIoU matrix over the holdout's
    positive patches (tens of GB); now one budget of reads at a time."""
    import subprocess
    import sys

    cache = _write_wide_patch_cache(tmp_path / "wide.h5")
    done = subprocess.run([sys.executable, "-c", _CAPPED, str(cache)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("AP50 ")
