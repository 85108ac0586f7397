"""The decision: hand-made evidence in, expected exits, verdict and cited numbers out."""

import json

import pytest
from click.testing import CliRunner

from probe_kit.cli.main import cli
from probe_kit.decision import Criteria, decide, load_results


def _results(ap50_by_layer: dict[int, float], readout="tuned-lens", blocks=12):
    profile = {"blocks": [1.0] * blocks}
    flops = {str(k): {"gflops_to_exit": k + 0.5, "fraction_of_full": (k + 0.5) / (blocks + 0.5)} for k in ap50_by_layer}
    return {
        readout: {"analyzer": readout, "layers": {str(k): {"AP50": v} for k, v in ap50_by_layer.items()}},
        "flops": {"analyzer": "flops", "layers": flops, "profile": profile},
    }


def test_early_exits_when_early_layers_clear_the_bars():
    # bars relative to final 0.8: layer 3 needs 0.282, layer 6 0.471, layer 9 0.659
    results = _results({3: 0.30, 6: 0.50, 9: 0.70, 12: 0.80})
    decision = decide(results)
    assert decision.exits == (3, 6, 9, 12)
    assert decision.verdict == "early exits viable"
    text = "\n".join(decision.rationale)
    for number in ("0.800", "0.300", "0.500", "0.700", "bar 0.35", "bar 0.59", "bar 0.82", "28% of the full"):
        assert number in text


def test_only_late_exits():
    decision = decide(_results({3: 0.05, 6: 0.20, 9: 0.70, 12: 0.80}))
    assert decision.exits == (9, 12) and decision.verdict == "only late exits viable"


def test_not_viable_and_weak_final_layer():
    assert decide(_results({3: 0.0, 6: 0.01, 12: 0.80})).verdict == "not viable"
    weak = decide(_results({3: 0.1, 6: 0.1, 12: 0.1}))
    assert weak.verdict == "not viable" and weak.exits == (12,)
    assert any("does not detect" in line for line in weak.rationale)


def test_hierarchy_violation_is_reported_and_gap_respected():
    decision = decide(_results({3: 0.5, 4: 0.5, 6: 0.48, 12: 0.8}), Criteria(min_gap_fraction=0.25))
    assert decision.exits[:2] == (3, 6)  # 4 is too close to 3
    assert any("hierarchy violated" in line for line in decision.rationale)


def test_deterministic_and_cli(tmp_path):
    results = _results({3: 0.3, 6: 0.5, 12: 0.8})
    assert decide(results).to_json() == decide(results).to_json()
    for name, data in results.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(data))
    assert set(load_results(tmp_path)) == {"tuned-lens", "flops"}
    out = CliRunner().invoke(cli, ["decide", "--results", str(tmp_path)])
    assert out.exit_code == 0 and "verdict: early exits viable" in out.output
    assert json.loads((tmp_path / "decision.json").read_text())["exits"] == [3, 6, 12]


def test_missing_final_layer_is_an_error():
    with pytest.raises(ValueError, match="no readout at the final layer 12"):
        decide(_results({3: 0.3, 6: 0.5}))
