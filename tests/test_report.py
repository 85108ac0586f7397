"""HTML reports: self-contained, autoescaped, and checked in a real (headless Chromium) browser."""

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from probe_kit.cli.main import cli
from probe_kit.experiment import load_experiment, run_experiment
from probe_kit.report import build_report


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
                "exits": {"layers": "2", "epochs": 2, "thresholds": [0.6, 0.9]},
            }
        )
    )
    run_experiment(load_experiment(path), folder / "out", say=lambda m: None)
    return folder / "out"


def test_report_is_one_self_contained_file(study, tmp_path):
    out = build_report(study, tmp_path / "r.html")
    html = out.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 4
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    for section in (
        "Summary",
        "Per-layer evidence",
        "mAP vs GFLOPs",
        "Precision-recall per exit",
        "Exit distribution per difficulty",
        "Provenance",
        "Not yet measured",
    ):
        assert section in html
    assert "rollout" in html  # named among what is missing


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


def test_cli_and_nothing_to_report(study, tmp_path):
    ok = CliRunner().invoke(cli, ["report", "--results", str(study), "--out", str(tmp_path / "a.html")])
    assert ok.exit_code == 0 and (tmp_path / "a.html").is_file()
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(cli, ["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "b.html")])
    assert bad.exit_code == 1 and "nothing to report" in bad.output
    assert not (tmp_path / "b.html").exists()


def _browser():
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
        "--window-size=1200,2000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(driver)), options=options)


def test_report_renders_in_headless_chromium(study, tmp_path):
    out = build_report(study, tmp_path / "r.html")
    browser = _browser()
    try:
        browser.get(out.resolve().as_uri())
        decoded = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);"
        )
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert decoded and all(decoded)
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
