"""A toy exit-head type and a toy policy, registered from outside probe_kit (the code of docs/exit-heads.md and
docs/exit-policies.md, read from the pages), are trained, saved, loaded, evaluated and compared like the
built-ins; and the registries refuse what they cannot use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_cache

import probe_kit
from probe_kit.heads import HEAD_TYPES, POLICIES, PolicySpec, register_head_type, register_policy
from probe_kit.heads.pipeline import Timing
from probe_kit.heads.policies import online
from probe_kit.heads.store import load_exits

DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_docs_example(page: str) -> dict:
    """Execute the one ```python block of a docs page (it registers its toy) and return its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert len(blocks) == 1, page
    namespace: dict = {"__name__": f"docs_{page.replace('-', '_').removesuffix('.md')}"}
    exec(compile(blocks[0], str(DOCS / page), "exec"), namespace)  # noqa: S102 (our own docs page)
    return namespace


@pytest.fixture
def toys():
    """The toy head type and policy registered; removed again afterwards."""
    heads, policy = run_docs_example("exit-heads.md"), run_docs_example("exit-policies.md")
    yield heads["LinearExitHeads"], policy["nobody_here"]
    HEAD_TYPES.pop("linear", None)
    POLICIES.pop("empty_scene", None)


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory):
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("plugins") / "c.h5")


def test_a_registered_head_type_and_policy_train_save_load_evaluate_and_compare(toys, cache, synth_dir, tmp_path):
    heads_type, _ = toys
    folder = probe_kit.train_exits(cache, "2", tmp_path / "linear", head="linear", epochs=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["head"] == "linear" and config["layers"] == [2, 4] and set(config["history"]) == {"2"}
    _, _, heads, loaded = load_exits(folder)
    assert type(heads) is heads_type and loaded.head == "linear"
    trained = heads.maps["2"].proj.weight
    fresh = heads_type.from_model(load_exits(folder)[0], (2,)).maps["2"].proj.weight
    assert not torch.equal(trained, fresh)  # the saved weights are the trained ones, not a new init

    timing = Timing(images=1, repeats=3)
    data = f"synth:{synth_dir}"
    single = probe_kit.evaluate_exits(folder, data, policy_kind="empty_scene", thresholds=(0.3, 0.9), timing=timing)
    assert single["policy"] == "empty_scene" and [s["threshold"] for s in single["sweep"]] == [0.3, 0.9]
    assert set(single["exits"]) == {"2", "4"} and 0 <= single["exits"]["2"]["AP50"] <= 1

    det = probe_kit.train_exits(cache, "2", tmp_path / "det", head="det", epochs=2)
    compared = probe_kit.compare_designs(
        [folder, det], data, policies=("empty_scene", "oracle"), thresholds={"empty_scene": (0.5,)}, timing=timing
    )
    rows = {(d["head"], d["policy"], d["threshold"]) for d in compared["designs"]}
    assert {("linear", "empty_scene", 0.5), ("det", "empty_scene", 0.5), ("linear", "static", None)} <= rows
    assert compared["policies"]["empty_scene"].startswith("leave when no detection slot")


def test_a_toy_policy_decides_like_its_rule(toys, cache, tiny_model):
    """The registered rule, swept from records, leaves exactly where the rule says: at the first exit seeing nobody."""
    from probe_kit.heads.records import ExitRecords, ExitStats

    _, rule = toys
    person = {2: torch.tensor([[0.1, 0.2], [0.8, 0.1]]), 4: torch.tensor([[0.1, 0.1], [0.9, 0.1]])}
    stats = {k: ExitStats(p, p, torch.zeros(2, 2, 4), torch.zeros(2, 1)) for k, p in person.items()}
    records = ExitRecords((2, 4), (1, 2), ((10, 10), (10, 10)), stats)
    fitted = POLICIES["empty_scene"].fit(None)
    assert fitted.rule is rule and fitted.choose(records, 0.5).tolist() == [2, 4]


def test_registries_refuse_what_they_cannot_use(toys):
    with pytest.raises(ValueError, match="already registered"):
        register_policy(PolicySpec("confidence", (0.5,), online(toys[1]), "another confidence"))
    with pytest.raises(ValueError, match="thresholds"):
        register_policy(PolicySpec("odd", (1.5,), online(toys[1]), "out of range"))
    with pytest.raises(TypeError, match="ExitHead subclass"):
        register_head_type(dict)
    with pytest.raises(ValueError, match="already registered"):
        register_head_type(type("Other", (toys[0],), {"name": "det"}))


def test_an_unregistered_head_or_policy_is_refused_in_one_line(cache, synth_dir, tmp_path):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    head = CliRunner().invoke(
        cli, ["train-exits", "--cache", str(cache), "--layers", "2", "--head", "nope", "--out", str(tmp_path / "x")]
    )
    assert head.exit_code == 2 and "--head" in head.output and "dense, det" in head.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="--policies"):
        probe_kit.compare_designs([tmp_path], f"synth:{synth_dir}", policies=("nope",))
