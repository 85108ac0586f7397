"""Third-party analyzers: their registry roles carry their numbers into the decision and the report."""

import configparser
import json
import re
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_cache

from probe_kit.analyzers import _registry, get_analyzer, list_analyzers, run_analyzer, write_result
from probe_kit.cache.reader import FeatureCache
from probe_kit.decision import decide, load_results
from probe_kit.report import build_report
from probe_kit.training.data import score

# A toy plugin module, as a third party would ship it: a readout whose AP50 at layer k is 0.2 * k, so it is
# the best readout at every layer of the tiny 4-layer model and must lead the decision's evidence there.
PLUGIN = """
from probe_kit.analyzers import AnalyzerResult, register


@register("toy-readout", "a toy readout for tests", role="readout", metrics={"AP50": "toy AP50"})
def run(cache, layers, seed=0):
    return AnalyzerResult("toy-readout", {}, seed, {k: {"AP50": 0.2 * k} for k in layers}, cache.fingerprint)
"""


@pytest.fixture
def plugin_entry_points(tmp_path, monkeypatch):
    """Entry points of a working toy plugin and of one whose module does not import; registry restored after."""
    (tmp_path / "toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "broken_plugin.py").write_text("import no_such_dependency_for_probe_kit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("broken", "broken_plugin", _registry.ENTRY_POINT_GROUP),
        EntryPoint("toy", "toy_plugin", _registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(_registry, "entry_points", lambda group: [p for p in points if p.group == group])
    monkeypatch.setattr(_registry, "_loaded", False)
    yield
    _registry._REGISTRY.pop("toy-readout", None)
    for module in ("toy_plugin", "broken_plugin"):
        sys.modules.pop(module, None)


def test_broken_plugin_is_named_and_the_others_load(plugin_entry_points):
    with pytest.warns(UserWarning, match=r"analyzer plugin 'broken' \(broken_plugin\) failed to load.*ModuleNotFound"):
        names = {a.name for a in list_analyzers()}
    assert {"toy-readout", "lens", "flops"} <= names
    assert get_analyzer("toy-readout").meta() == {"role": "readout", "metrics": [["AP50", "toy AP50"]], "chance": None}


def test_register_refuses_incomplete_metadata():
    with pytest.raises(ValueError, match="role 'readuot' is not one of"):
        _registry.register("x", "x", role="readuot", metrics={"AP50": "x"})
    with pytest.raises(ValueError, match="needs metrics"):
        _registry.register("x", "x", role="evidence")
    with pytest.raises(ValueError, match="headline metric must be 'AP50'"):
        _registry.register("x", "x", role="readout", metrics={"AP": "x"})
    assert "x" not in _registry._REGISTRY


def test_toy_readout_reaches_the_decision_and_the_report(plugin_entry_points, tiny_model, synth_dir, tmp_path, recwarn):
    cache = write_tiny_cache(tiny_model, synth_dir, tmp_path / "c.h5")
    study = tmp_path / "study"
    for name in ("toy-readout", "lens", "flops"):
        write_result(run_analyzer(name, cache, "all"), study / "results" / name)
    saved = json.loads((study / "results/toy-readout/result.json").read_text())
    assert saved["meta"]["role"] == "readout"

    decision = decide(load_results(study / "results"))
    for layer in (1, 2, 3):
        row = decision.evidence[layer]
        assert row["toy-readout"] == pytest.approx(0.2 * layer)
        assert row["best_readout"] == "toy-readout" and row["best_AP50"] == pytest.approx(0.2 * layer)
    assert any("(toy-readout)" in line for line in decision.rationale)
    (study / "results/decision.json").write_text(json.dumps(decision.to_json()))

    html = build_report(study, tmp_path / "r.html").read_text()
    assert "toy AP50" in html  # a column of the per-layer table, named by its registered label
    answer = html.split('id="answer"', 1)[1].split("</section>", 1)[0]
    assert "toy-readout" in answer  # the best readout named in the answer card's row


def test_the_documented_plugin_is_complete_and_runs(tiny_model, synth_dir, tmp_path, monkeypatch):
    """docs/analyzers.md's plugin, code and setup.cfg as printed, loads through its entry point and decides."""
    doc = (Path(__file__).parent.parent / "docs/analyzers.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.DOTALL).group(1)
    setup = configparser.ConfigParser()
    setup.read_string(re.search(r"```ini\n(.*?)```", doc, re.DOTALL).group(1))
    name, module = (v.strip() for v in setup["options.entry_points"][_registry.ENTRY_POINT_GROUP].strip().split("="))
    (tmp_path / module).mkdir()
    (tmp_path / module / "__init__.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name, module, _registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(_registry, "entry_points", lambda group: [point] if group == point.group else [])
    monkeypatch.setattr(_registry, "_loaded", False)
    try:
        assert get_analyzer(name).role == "readout"
        cache = write_tiny_cache(tiny_model, synth_dir, tmp_path / "c.h5")
        result = run_analyzer(name, cache, "2,4", shift=0.0)
        assert result.to_json()["meta"]["role"] == "readout" and set(result.layers) == {2, 4}
        # shift 0 at the last layer is the model itself: the AP50 of the model's own final outputs
        with FeatureCache(cache) as opened:
            logits, boxes = (torch.from_numpy(a) for a in opened.final_outputs())
            own = score(logits, boxes, opened.samples(), opened.person_index())
        assert result.layers[4]["AP50"] == pytest.approx(own["AP50"], abs=1e-6)
    finally:
        _registry._REGISTRY.pop(name, None)
        sys.modules.pop(module, None)
