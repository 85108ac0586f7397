"""The decision: hand-made evidence in, expected exits, verdict and cited numbers out."""

import json
import re

import pytest
from click.testing import CliRunner

from probe_kit.analyzers import analyzer_meta
from probe_kit.cli.main import cli
from probe_kit.decision import Criteria, criteria_from, decide, load_results, parse_bars

READOUT = {"role": "readout", "metrics": [["AP50", "AP50"]], "chance": None}
COST = {"role": "cost", "metrics": [["gflops_to_exit", "GFLOPs"]], "chance": None}


def _results(ap50_by_layer: dict[int, float], readout="tuned-lens", blocks=12):
    """Results as written by analyzers: per-layer metrics plus the registry meta they record."""
    profile = {"blocks": [1.0] * blocks}
    flops = {str(k): {"gflops_to_exit": k + 0.5, "fraction_of_full": (k + 0.5) / (blocks + 0.5)} for k in ap50_by_layer}
    return {
        readout: {
            "analyzer": readout,
            "meta": READOUT,
            "layers": {str(k): {"AP50": v} for k, v in ap50_by_layer.items()},
        },
        "flops": {"analyzer": "flops", "meta": COST, "layers": flops, "profile": profile},
    }


def test_early_exits_when_early_layers_clear_the_bars():
    # bars relative to final 0.8: layer 3 needs 0.282, layer 6 0.471, layer 9 0.659
    results = _results({3: 0.30, 6: 0.50, 9: 0.70, 12: 0.80})
    decision = decide(results)
    assert decision.exits == (3, 6, 9, 12)
    assert decision.verdict == "early exits viable"
    text = "\n".join(decision.rationale)
    for number in ("0.800", "0.300", "0.500", "0.700", "(35% of final)", "(59% of final)", "(82% of final)"):
        assert number in text
    assert "bar AP50 0.282" in text and "28% of the full" in text
    assert decision.summary.startswith("Early exits viable: exits at layers 3, 6, 9 reach their bars")


def test_only_late_exits():
    decision = decide(_results({3: 0.05, 6: 0.20, 9: 0.70, 12: 0.80}))
    assert decision.exits == (9, 12) and decision.verdict == "only late exits viable"


def test_not_viable_and_weak_final_layer():
    assert decide(_results({3: 0.0, 6: 0.01, 12: 0.80})).verdict == "not viable"
    weak = decide(_results({3: 0.1, 6: 0.1, 12: 0.1}))
    assert weak.verdict == "not viable" and weak.exits == (12,)
    assert any("does not detect" in line for line in weak.rationale)
    dead = decide(_results({3: 0.0, 6: 0.0, 12: 0.0}))  # every bar is 0.000: no layer may "pass" it
    assert not any(row["passes"] for row in dead.evidence.values() if "passes" in row)
    assert not any("-> passes" in line for line in dead.rationale)


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


def test_not_viable_summary_names_the_final_layer():
    decision = decide(_results({3: 0.0, 6: 0.01, 12: 0.80}))
    assert decision.summary == (
        "Early exit is not viable for this model on this data: no layer before 12 reaches its bar"
    )


def test_users_bars_replace_the_default():
    results = _results({3: 0.25, 6: 0.40, 9: 0.60, 12: 0.80})
    assert decide(results).exits == (12,)  # default bars relative to 0.80: 0.282 / 0.471 / 0.659
    mine = decide(results, Criteria(bars=parse_bars("3:0.20,6:0.40,9:0.70")))
    assert mine.exits == (3, 6, 12)
    assert mine.evidence[9]["bar_AP50"] == pytest.approx(0.70) and not mine.evidence[9]["passes"]
    between = decide(_results({3: 0.2, 5: 0.3, 12: 0.8}), Criteria(bars=parse_bars("3:0.20,7:0.40")))
    assert between.evidence[5]["bar_AP50"] == pytest.approx(0.30)  # linear between listed layers


def test_bars_from_a_file_and_from_yaml_mapping(tmp_path):
    path = tmp_path / "bars.yaml"
    path.write_text("3: 0.3\n9: 0.7\n6: 0.5\n")
    assert parse_bars(str(path)) == ((3, 0.3), (6, 0.5), (9, 0.7))
    assert criteria_from({"bars": {3: 0.3}, "max_exits": 2}) == Criteria(bars=((3, 0.3),), max_exits=2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("3:0.3,6", "--bars '3:0.3,6': '6' is not LAYER:AP50"),
        ("3:abc", "'3:abc' is not LAYER:AP50"),
        ("3:1.5", "bar 1.5 at layer 3 is not an AP50 between 0 and 1"),
        ("0:0.2", "layer 0 is not a block index"),
        ("nofile.yaml", "expected LAYER:AP50 pairs"),
    ],
)
def test_bad_bars_are_one_line_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_bars(text)


def test_bad_decision_keys():
    with pytest.raises(ValueError, match=r"decision.max_exit: unknown key"):
        criteria_from({"max_exit": 2})
    with pytest.raises(ValueError, match=r"decision.max_exits: expected int"):
        criteria_from({"max_exits": 1.5})
    with pytest.raises(ValueError, match=r"decision.bars: bar 2 at layer 3"):
        criteria_from({"bars": {3: 2}})
    with pytest.raises(ValueError, match="bars: layer 15 is beyond the model's 12 layers"):
        decide(_results({3: 0.3, 12: 0.8}), Criteria(bars=((15, 0.5),)))


def test_cli_bars_and_bad_bars(tmp_path):
    for name, data in _results({3: 0.25, 6: 0.40, 12: 0.80}).items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(data))
    out = CliRunner().invoke(cli, ["decide", "--results", str(tmp_path), "--bars", "3:0.2,6:0.4"])
    assert out.exit_code == 0, out.output
    saved = json.loads((tmp_path / "decision.json").read_text())
    assert saved["exits"] == [3, 6, 12] and saved["criteria"]["bars"] == [[3, 0.2], [6, 0.4]]
    bad = CliRunner().invoke(cli, ["decide", "--results", str(tmp_path), "--bars", "3:2"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1 and "--bars" in bad.output


def test_roles_come_from_the_registry_not_from_names():
    """An analyzer is read by its role: a readout under any name decides, a built-in name without a role does not."""
    results = _results({3: 0.3, 6: 0.5, 12: 0.8}, readout="someone-elses-readout")
    assert decide(results).evidence[3]["best_readout"] == "someone-elses-readout"
    unlabelled = {name: {k: v for k, v in r.items() if k != "meta"} for name, r in _results({3: 0.3, 12: 0.8}).items()}
    with pytest.raises(ValueError, match="no readout among the results"):
        decide(unlabelled)
    assert decide(unlabelled, roles=analyzer_meta()).evidence[3]["tuned-lens"] == 0.3  # results from before meta


def test_evidence_analyzers_are_cited_with_chance():
    results = _results({3: 0.3, 12: 0.8})
    results["rollout"] = {
        "analyzer": "rollout",
        "meta": {"role": "evidence", "metrics": [["attn_inbox_mass", "raw-attention in-box mass"]], "chance": "c"},
        "layers": {"3": {"attn_inbox_mass": 0.58, "c": 0.1}},
    }
    lines = decide(results).rationale
    assert "layer 3 supporting evidence: raw-attention in-box mass 0.580 (chance 0.100)" in lines


def test_experiment_yaml_decision_key_is_validated(tmp_path):
    from probe_kit.experiment import load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text("name: x\nsynth: {frames: 4}\ndecision: {bars: '3:0.3,6:0.5'}\n")
    assert criteria_from(load_experiment(path).decision).bars == ((3, 0.3), (6, 0.5))
    path.write_text("name: x\nsynth: {frames: 4}\ndecision: {bars: {3: 1.3}}\n")
    with pytest.raises(ValueError, match=r"exp.yaml: decision.bars: bar 1.3 at layer 3 is not an AP50"):
        load_experiment(path)


def test_the_final_reference_is_the_readout_registered_as_the_model_whatever_its_name():
    """At the final layer exits are measured against the readout flagged ``reference`` (the model's own head),
    found by its metadata: renaming it changes nothing, and without the flag the best readout stands in."""
    results = _results({6: 0.30, 12: 0.90}, readout="own-head")
    results["own-head"]["meta"] = {**READOUT, "reference": True}
    results["probe"] = {"analyzer": "probe", "meta": READOUT, "layers": {"6": {"AP50": 0.35}, "12": {"AP50": 0.95}}}
    assert "final layer 12: AP50 0.900" in "\n".join(decide(results).rationale)
    results["own-head"]["meta"] = READOUT
    assert "final layer 12: AP50 0.950" in "\n".join(decide(results).rationale)
