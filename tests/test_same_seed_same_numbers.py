"""Same seed, same numbers: every trainer gives bit-identical outputs for the same inputs, seed and thread count
(set here, so the two runs sum in the same order): exit heads of each type, with and without fine-tuned blocks,
probes, the tuned lens and the learned gate."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_tiny_cache
from safetensors.torch import load_file

import probe_kit
from probe_kit.analyzers import run_analyzer


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("seeded") / "c.h5", tokens=("det", "patch"))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _weights(folder) -> dict[str, torch.Tensor]:
    return {
        name: tensor
        for file in ("heads", "blocks")
        if (folder / f"{file}.safetensors").is_file()
        for name, tensor in load_file(folder / f"{file}.safetensors").items()
    }


@pytest.mark.parametrize(("head", "tuned"), [("det", 0), ("dense", 0), ("det", 1), ("dense", 1)])
def test_exit_heads_are_bit_identical_for_the_same_seed(cache, tmp_path, one_thread, head, tuned):
    options = {"epochs": 2, "finetune_blocks": tuned, "finetune_epochs": 1, "finetune_lr": 1e-3}
    runs = [probe_kit.train_exits(cache, "2", tmp_path / f"run{i}", head=head, seed=3, **options) for i in range(2)]
    a, b = (_weights(run) for run in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    histories = [json.loads((run / "config.json").read_text()) for run in runs]
    assert histories[0]["history"] == histories[1]["history"]
    assert histories[0]["finetune_history"] == histories[1]["finetune_history"]
    other = probe_kit.train_exits(cache, "2", tmp_path / "other", head=head, seed=4, **options)
    assert any(not torch.equal(a[k], _weights(other)[k]) for k in a)  # the seed matters: the check can fail


@pytest.mark.parametrize("name", ["probe-linear", "probe-mlp", "probe-dense", "tuned-lens"])
def test_trained_readouts_are_identical_for_the_same_seed(cache, one_thread, name):
    options = {"epochs": 2}
    first, second = (run_analyzer(name, cache, "2,4", seed=5, **options).to_json() for _ in range(2))
    assert first["layers"] == second["layers"]


def test_the_learned_gate_is_identical_for_the_same_seed(one_thread):
    from probe_kit.heads.gate import train_gates
    from probe_kit.heads.records import ExitRecords, ExitStats

    generator = torch.Generator().manual_seed(0)
    person = {k: torch.rand(40, 5, generator=generator) for k in (2, 4)}
    stats = {
        k: ExitStats(p, p, torch.rand(40, 5, 4, generator=generator), torch.rand(40, 8, generator=generator))
        for k, p in person.items()
    }
    records = ExitRecords((2, 4), tuple(range(40)), ((10, 10),) * 40, stats)
    (a, summary_a), (b, summary_b) = train_gates(records, 0.5, seed=1), train_gates(records, 0.5, seed=1)
    assert summary_a == summary_b and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
