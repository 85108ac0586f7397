"""Caches and exits folders tampered with at random: every reader either refuses in one line naming the file (a
ValueError or OSError, which the CLI prints as one line), or reads the same numbers as the untampered artefact;
never a traceback from a KeyError, TypeError or IndexError (issue: no number from a broken input)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_tiny_cache
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probe_kit
from probe_kit.cache.reader import FeatureCache
from probe_kit.heads.store import load_exits

TAMPER = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def artefacts(tiny_model, synth_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tamper")
    cache = write_tiny_cache(tiny_model, synth_dir, folder / "c.h5")
    exits = probe_kit.train_exits(cache, "2", folder / "exits", epochs=1)
    with FeatureCache(cache) as opened:
        features = opened.read(2, "det")
    return {"cache": cache, "exits": exits, "features": features}


def _paths(value, prefix=()):
    """Every (key path) inside a JSON value, the value itself included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(value, path, new):
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def _refused_by_name(err: Exception, name: str) -> None:
    assert isinstance(err, (ValueError, OSError)), f"{type(err).__name__}: {err}"
    assert name in str(err), str(err)


@TAMPER
@given(data=st.data())
def test_a_tampered_cache_attribute_or_dataset_is_refused_by_name_or_reads_the_same(artefacts, data):
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "c.h5"
        shutil.copy(artefacts["cache"], copy)
        with h5py.File(copy, "r+") as handle:
            names = sorted(handle.attrs)
            datasets: list[str] = []
            handle.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
            action = data.draw(st.sampled_from(["attribute", "json field", "delete attribute", "delete dataset"]))
            if action == "attribute":
                name = data.draw(st.sampled_from(names))
                handle.attrs[name] = json.dumps(data.draw(JSON_VALUES))
            elif action == "json field":
                records = [n for n in names if str(handle.attrs[n]).startswith("{") and str(handle.attrs[n]) != "{}"]
                name = data.draw(st.sampled_from(records))
                record = json.loads(handle.attrs[name])
                path = data.draw(st.sampled_from(list(_paths(record))[1:]))
                handle.attrs[name] = json.dumps(_replace(record, path, data.draw(JSON_VALUES)))
            elif action == "delete attribute":
                del handle.attrs[data.draw(st.sampled_from(names))]
            else:
                del handle[data.draw(st.sampled_from(datasets))]
        try:
            with FeatureCache(copy) as cache:
                same = np.array_equal(cache.read(2, "det"), artefacts["features"])
                cache.samples()
                cache.final_outputs()
        except Exception as err:  # noqa: BLE001 (the property: which exceptions)
            _refused_by_name(err, str(copy))
            return
        assert same


@TAMPER
@given(data=st.data())
def test_a_tampered_exits_config_is_refused_by_name_or_loads(artefacts, data):
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "exits"
        shutil.copytree(artefacts["exits"], copy)
        config = json.loads((copy / "config.json").read_text())
        path = data.draw(st.sampled_from(list(_paths(config))[1:]))
        (copy / "config.json").write_text(json.dumps(_replace(config, path, data.draw(JSON_VALUES))))
        try:
            load_exits(copy)
        except Exception as err:  # noqa: BLE001 (the property: which exceptions)
            _refused_by_name(err, str(copy))


def _other_type(value) -> st.SearchStrategy:
    """A JSON value of another type than ``value`` (a number becomes text, a list, ...; not null, which analyzers
    write for "not measured here")."""
    kinds = {
        bool: st.booleans(),
        int: st.integers(-5, 5),
        float: st.floats(-2, 2, allow_nan=False),
        str: st.text(max_size=5),
        list: st.lists(st.integers(), max_size=2),
        dict: st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    }
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    excluded = (int, float) if number else (type(value),)  # another number is another valid result, not damage
    return st.one_of([s for kind, s in kinds.items() if kind not in excluded])


@pytest.fixture(scope="module")
def results(artefacts, tmp_path_factory):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    folder = tmp_path_factory.mktemp("tamper-results") / "results"
    for name in ("lens", "flops"):
        args = ["analyze", name, "--cache", str(artefacts["cache"]), "--out", str(folder / name)]
        assert CliRunner().invoke(cli, args).exit_code == 0
    decided = CliRunner().invoke(cli, ["decide", "--results", str(folder), "--out", str(folder.parent / "d.json")])
    assert decided.exit_code == 0, decided.output
    return {"folder": folder, "decision": json.loads((folder.parent / "d.json").read_text())}


@TAMPER
@given(data=st.data())
def test_a_result_file_with_a_field_of_another_type_is_refused_by_name_or_decides_the_same(results, data):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "results"
        shutil.copytree(results["folder"], copy)
        name = data.draw(st.sampled_from(["lens", "flops"]))
        path = copy / name / "result.json"
        result = json.loads(path.read_text())
        field = data.draw(st.sampled_from(list(_paths(result))[1:]))
        original = result
        for key in field:
            original = original[key]
        path.write_text(json.dumps(_replace(result, field, data.draw(_other_type(original)))))
        done = CliRunner().invoke(cli, ["decide", "--results", str(copy), "--out", str(Path(tmp) / "d.json")])
        if done.exit_code == 0:
            assert json.loads((Path(tmp) / "d.json").read_text()) == results["decision"], field
        else:
            assert done.exit_code == 1 and "Traceback" not in done.output, done.output
            errors = [line for line in done.output.splitlines() if line.startswith("Error: ")]
            assert len(errors) == 1 and "result.json" in errors[0], (field, done.output)
