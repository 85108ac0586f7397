"""HTML reports: the answer first, computed alerts, copyable tables, runnable hints, comparisons; checked in a
real (headless Chromium) browser."""

import base64
import csv
import io
import json
import re
import shlex
import shutil
from pathlib import Path
from urllib.parse import unquote

import click
import pytest
import yaml
from click.testing import CliRunner

from probe_kit.cli.main import cli
from probe_kit.experiment import load_experiment, run_experiment
from probe_kit.report import build_comparison, build_report
from probe_kit.report.answer import alerts
from probe_kit.report.collect import ReportData

READOUT = {"role": "readout", "metrics": [["AP50", "AP50"]], "chance": None}


@pytest.fixture(scope="module")
def study(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    path = folder / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "synth": {"frames": 12, "seed": 4, "size": 128},
                "model": str(tiny_model),
                "analyzers": {"flops": {}, "lens": {}, "probe-mlp": {"epochs": 2, "layers": "2,4"}},
                "decision": {"bars": {2: 0.01}},  # the user's bar, carried from YAML through the runner
                "exits": {
                    "layers": "2",
                    "epochs": 2,
                    "thresholds": [0.6, 0.9],
                    "timing_images": 3,
                    "timing_repeats": 5,
                },
            }
        )
    )
    run_experiment(load_experiment(path), folder / "out", say=lambda m: None)
    return folder / "out"


@pytest.fixture(scope="module")
def html(study, tmp_path_factory):
    return build_report(study, tmp_path_factory.mktemp("r") / "r.html").read_text()


def _csvs(html: str) -> dict[str, list[list[str]]]:
    """Every table's CSV data URI, decoded and parsed, by download file name."""
    found = re.findall(r'<a download="([^"]+)" href="data:text/csv;charset=utf-8,([^"]+)"', html)
    return {name: list(csv.reader(io.StringIO(unquote(data)))) for name, data in found}


def _answer(html: str) -> str:
    return html.split('<section id="answer">', 1)[1].split("</section>", 1)[0]


def test_report_is_one_self_contained_file(html):
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    for section in (
        'id="alerts"',
        "Example frames",
        "Per-layer evidence",
        "AP50 vs GFLOPs",
        "Precision-recall per exit (AP50)",
        "Exit distribution per difficulty",
        "Provenance",
        "Not yet measured",
    ):
        assert section in html
    assert html.index('id="answer"') < html.index("<nav>")  # the answer comes first
    rationale = html.split('id="rationale"', 1)[1]
    assert "<details>" in rationale.split("</details>", 1)[0] and "final layer 4: AP50" in rationale


def test_answer_card_states_the_verdict_and_one_row_per_exit(study, html):
    decision = json.loads((study / "results/decision.json").read_text())
    answer = _answer(html)
    assert decision["summary"] in answer
    rows = _csvs(html)["answer.csv"]
    header, body = rows[0], rows[1:]
    assert header[:6] == ["layer", "best readout", "its AP50", "% of final layer", "bar (AP50)", "pass/fail"]
    assert [r[0] for r in body] == ["2", "4 (final)"]  # the trained exit and the final layer
    # the row's numbers are the result files' own, independently read here
    lens = json.loads((study / "results/lens/result.json").read_text())["layers"]
    mlp = json.loads((study / "results/probe-mlp/result.json").read_text())["layers"]
    values = {"lens": lens["2"]["AP50"], "probe-mlp": mlp["2"]["AP50"]}
    assert float(body[0][2]) == pytest.approx(max(values.values()))
    assert values[body[0][1]] == max(values.values())  # the named readout is one that reached it
    evidence = decision["evidence"]["2"]
    assert decision["criteria"]["bars"] == [[2, 0.01]] and evidence["bar_AP50"] == pytest.approx(0.01)
    assert "minimum AP50 an exit there must reach (yours)" in answer
    assert float(body[0][4]) == pytest.approx(evidence["bar_AP50"])
    assert body[0][5] == ("pass" if evidence["passes"] else "fail")
    exits_eval = json.loads((study / "exits_eval/result.json").read_text())
    assert float(body[0][6]) == pytest.approx(exits_eval["exits"]["2"]["AP50"])
    flops = json.loads((study / "results/flops/result.json").read_text())["layers"]
    assert float(body[0][7]) == pytest.approx(1 - flops["2"]["fraction_of_full"])
    assert float(body[0][8]) == pytest.approx(exits_eval["exits"]["2"]["latency"]["median_ms"])
    assert float(body[0][9]) == pytest.approx(exits_eval["exits"]["2"]["latency"]["iqr_ms"])
    assert " ms (IQR " in answer


def test_every_table_downloads_as_csv_and_per_exit_coco_summary(study, html):
    tables = _csvs(html)
    assert {"answer.csv", "per-layer.csv", "coco-per-exit.csv", "adaptive-sweep.csv"} <= set(tables)
    layers = tables["per-layer.csv"]
    assert layers[0][:3] == ["layer", "lens AP50", "probe-mlp AP50"]
    lens = json.loads((study / "results/lens/result.json").read_text())["layers"]
    assert [float(r[1]) for r in layers[1:]] == pytest.approx([lens[str(k)]["AP50"] for k in (1, 2, 3, 4)])
    coco = tables["coco-per-exit.csv"]
    assert coco[0] == ["exit", "AP (0.5:0.95)", "AP50", "AP75", "APs (small)", "APm (medium)", "APl (large)",
                       "AR1", "AR10", "AR100"]  # fmt: skip
    # pycocotools on the detection files reproduces evaluate-exits' own AP50 of the same detections
    exits_eval = json.loads((study / "exits_eval/result.json").read_text())
    by_exit = {r[0]: r for r in coco[1:]}
    assert float(by_exit["full"][2]) == pytest.approx(exits_eval["full_model"]["AP50"])
    assert float(by_exit["L2"][2]) == pytest.approx(exits_eval["exits"]["2"]["AP50"])


def test_example_frames_degrade_to_a_note(study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    shutil.rmtree(copy / "exits_eval/detections")
    html = build_report(copy, tmp_path / "r.html").read_text()
    assert "Example frames left out" in html and "detections/full.json" in html


def _parse(command: str):
    """Parse a hint's command line against the real CLI: unknown options or missing required ones raise."""
    args = shlex.split(command)
    assert args[0] == "probe-kit"
    group = click.Context(cli, info_name="probe-kit")
    sub = cli.get_command(group, args[1])
    assert sub is not None, f"no command {args[1]!r}"
    return sub.make_context(args[1], args[2:], parent=group)


def test_not_yet_measured_hints_run_as_written(study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    shutil.rmtree(copy / "results/lens")
    (copy / "results/decision.json").unlink()
    html = build_report(copy, tmp_path / "r.html").read_text()
    missing = html.split('id="missing"', 1)[1].split("</ul>", 1)[0]
    commands = [c.replace("&#39;", "'").replace("&amp;", "&") for c in re.findall(r"<code>([^<]+)</code>", missing)]
    for start in ("probe-kit analyze lens ", "probe-kit cache ", "probe-kit analyze rollout ", "probe-kit decide "):
        assert any(c.startswith(start) for c in commands), start
    for command in commands:
        _parse(command)
    # and two of them, run exactly as written, do their job
    for command in commands:
        if command.startswith(("probe-kit analyze lens", "probe-kit decide")):
            ran = CliRunner().invoke(cli, shlex.split(command)[1:])
            assert ran.exit_code == 0, (command, ran.output)
    assert (copy / "results/lens/result.json").is_file() and (copy / "results/decision.json").is_file()


def test_alerts_are_computed_from_the_results():
    data = ReportData(Path("x"))
    data.roles = {"lens": {**READOUT, "reference": True}, "probe-linear": READOUT}  # by metadata, not by name
    data.results = {
        "lens": {"layers": {"12": {"AP50": 0.79}}, "profile": {"blocks": [1] * 12}},
        "probe-linear": {
            "layers": {"12": {"AP50": 0.26}},
            "training": {"12": [{"epoch": 0, "loss": 1.0}]},
            "split": {"train_image_ids": [1, 2], "val_image_ids": [2, 3]},
        },
    }
    full = {"AP": 0.4, "AP50": 0.8, "gflops": 1.0, "latency": {"median_ms": 10.0, "iqr_ms": 1.0, "repeats": 15}}
    noisy = {"ratio": 1.01, "round_ratio_iqr": [0.95, 1.06], "measurable": False}
    data.exits_eval = {
        "evaluated_on": "all images",
        "full_model": full,
        "exits": {
            "6": {"AP50": 0.5, "mean_gflops": 0.5, "measured_speedup": noisy, "latency": full["latency"]},
            "12": {"AP50": 0.8, "mean_gflops": 1.0, "measured_speedup": noisy, "latency": full["latency"]},
        },
        "operating_point": {"threshold": 0.99, "AP50": 0.8, "mean_gflops": 0.995, "measured_speedup": noisy},
    }
    data.val_persons = 40
    text = "\n".join(alerts(data))
    assert "scored on images they trained on" in text
    assert "probe-linear was scored on 1 images it trained on" in text
    assert "probe-linear is underfit: AP50 0.260 at the last layer 12, where lens (the model's own head)" in text
    assert "0.790" in text
    assert "threshold 0.99) saves nothing: 0.995 of 1.000 GFLOPs" in text
    assert "within noise" in text and "exit 6, the operating point" in text  # not exit 12: the full model itself
    assert "only 40 persons" in text
    # and none of them where the results give no reason
    data.results["probe-linear"]["layers"]["12"]["AP50"] = 0.7
    data.results["probe-linear"]["split"] = {"train_image_ids": [1], "val_image_ids": [2]}
    data.exits_eval["evaluated_on"] = "validation sequences"
    data.exits_eval["operating_point"]["mean_gflops"] = 0.6
    measurable = {"ratio": 1.5, "round_ratio_iqr": [1.4, 1.6], "measurable": True}
    data.exits_eval["operating_point"]["measured_speedup"] = measurable
    data.exits_eval["exits"]["6"]["measured_speedup"] = measurable
    data.val_persons = 400
    assert alerts(data) == []


def test_strings_are_escaped(study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    result_path = copy / "results/lens/result.json"
    result = json.loads(result_path.read_text())
    result["options"]["note"] = "<script>alert(1)</script>"
    result_path.write_text(json.dumps(result))
    html = build_report(copy, tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html or "\\u003cscript\\u003e" in html


def test_cli_says_where_it_wrote_open_without_browser_and_nothing_to_report(study, tmp_path, monkeypatch):
    import webbrowser

    monkeypatch.setattr(webbrowser, "open", lambda url: False)
    ok = CliRunner().invoke(cli, ["report", "--results", str(study), "--out", str(tmp_path / "a.html"), "--open"])
    assert ok.exit_code == 0 and (tmp_path / "a.html").is_file()
    assert f"report written to {(tmp_path / 'a.html').resolve()}" in ok.output
    assert "no browser could be opened here; open file://" in ok.output
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(cli, ["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "b.html")])
    assert bad.exit_code == 1 and "nothing to report" in bad.output
    assert not (tmp_path / "b.html").exists()


def test_compare_puts_studies_on_the_same_curves(study, tmp_path):
    other = tmp_path / "finetuned"
    shutil.copytree(study, other)
    out = CliRunner().invoke(cli, ["report", "--compare", str(study), str(other), "--out", str(tmp_path / "c.html")])
    assert out.exit_code == 0, out.output
    html = (tmp_path / "c.html").read_text()
    assert f"{study.name} vs finetuned" in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 2
    assert html.count('download="answer.csv"') == 2
    one = CliRunner().invoke(cli, ["report", "--compare", str(study), "--out", str(tmp_path / "d.html")])
    assert one.exit_code == 1 and "--compare: give two or more study folders" in one.output
    with pytest.raises(ValueError, match="two or more"):
        build_comparison([study], tmp_path / "e.html")


def _browser(width: int, height: int):
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not chromium.exists() or not driver.exists():
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (CI does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(driver)), options=options)


def test_report_renders_in_headless_chromium_with_the_answer_on_the_first_screen(study, tmp_path):
    out = build_report(study, tmp_path / "r.html")
    browser = _browser(1366, 768)
    try:
        browser.set_window_size(1366, 768)
        browser.get(out.resolve().as_uri())
        decoded = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);"
        )
        box = browser.execute_script(
            "const r = document.getElementById('answer').getBoundingClientRect();"
            "return [r.top + window.scrollY, r.bottom + window.scrollY, window.innerWidth];"
        )
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert decoded and all(decoded)
    assert errors == []
    assert box[1] <= 768, f"the answer card ends at {box[1]} px, below the first screen (768 px)"
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_timing_conditions_are_shown_and_a_busy_machine_is_warned_of():
    from probe_kit.report.answer import alerts, answer

    data = ReportData(Path("x"))
    timing = {"rounds": 21, "stopped": "round cap (21)", "cpu": "AMD EPYC", "cores": 2, "threads": 1}
    data.designs = {"timing": {**timing, "load_before": [5.3, 4.0, 3.0], "load_after": [6.1, 5.0, 4.0]}}
    data.exits_eval = {"timing": {**timing, "load_before": [0.4, 0.3, 0.2], "load_after": [0.9, 0.5, 0.2]}}
    lines = answer(data)["timing"]
    # the card names the machine, rounds and load; why the rounds stopped stays in the rationale (the card's room)
    assert lines[0].startswith("Exit latencies timed on AMD EPYC, 1 thread(s), 21 interleaved rounds; load")
    assert "load average 0.4 before, 0.9 after, on 2 cores" in lines[0] and "load average 5.3 before" in lines[1]
    warnings = [w for w in alerts(data) if w.startswith("The machine was busy")]
    assert warnings == [
        "The machine was busy while timing (load average 6.1 on 2 cores): latencies and speed-ups are noisier than "
        "on a quiet machine; rerun there before acting on them."
    ]
