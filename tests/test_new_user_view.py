"""What a new user sees, on the output of ``probe-kit demo --fast`` run as a user would (a subprocess, stderr
redirected to a file): a log that reads as lines, each stage's time, a report that fits a 1366x768 laptop screen,
and one latency per fact (issue: what a new user sees)."""

from __future__ import annotations

import html
import re
import subprocess
import sys

import pytest
from test_report import _browser


@pytest.fixture(scope="module")
def demo_fast(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-fast")
    with open(folder / "stderr.log", "w") as stderr, open(folder / "stdout.log", "w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "probe_kit", "demo", "--fast", "--out", str(folder / "study")],
            stdout=stdout,
            stderr=stderr,
            cwd=folder,
            timeout=900,
            check=False,
        )
    stderr_text = (folder / "stderr.log").read_text()
    assert done.returncode == 0, stderr_text[-3000:]
    return {"study": folder / "study", "stderr": stderr_text, "stdout": (folder / "stdout.log").read_text()}


def test_a_redirected_log_has_no_progress_frames_and_a_few_lines_per_stage(demo_fast):
    log = demo_fast["stderr"]
    assert "\r" not in log and "\x1b[" not in log
    lines = log.splitlines()
    assert all(re.match(r"\[[a-z -]+\] ", line) for line in lines), [x for x in lines if not x.startswith("[")]
    per_stage: dict[str, int] = {}
    for line in lines:
        stage = line[1 : line.index("]")].split()[0]
        per_stage[stage] = per_stage.get(stage, 0) + 1
    assert max(per_stage.values()) <= 40, per_stage  # analyze: 9 analyzers x (start, done)
    assert {"data", "cache", "analyze", "decide", "exits", "designs", "report", "total"} <= set(per_stage)


def test_every_stage_says_its_time_and_the_run_its_total(demo_fast):
    lines = demo_fast["stderr"].splitlines()
    for stage in ("data", "cache", "analyze lens", "analyze probe-dense", "exits", "designs", "report"):
        done = rf"\[{stage}\] done in (\d+\.\d s|\d+ min \d\d s)"
        assert any(re.fullmatch(done, line) for line in lines), stage
    assert re.fullmatch(r"\[total\] .+; slowest: .+", lines[-1]), lines[-1]


def _full_model_latencies(text: str) -> list[tuple[str, str]]:
    """``(figure, the words around it)`` for every latency given for the full model in the same sentence."""
    found = []
    for start in (m.start() for m in re.finditer("full model", text)):
        window = re.split(r"\.\s", text[start : start + 400])[0]  # a figure in a later sentence is another fact's
        number = re.search(r"(\d+\.\d+) ms", window)
        if number and "full model" not in window[len("full model") : number.start()]:
            found.append((number.group(1), " ".join(window[: number.end() + 160].split())))
    return found


def test_each_full_model_latency_is_one_number_or_says_which_measurement_it_is(demo_fast):
    """The exit evaluation and the design comparison time the full model in separate runs on different images: a
    figure is either the same number as another of its run, or says which run it comes from."""
    page = html.unescape(re.sub(r"<[^>]+>", " ", (demo_fast["study"] / "report.html").read_text()))
    figures = _full_model_latencies(page) + _full_model_latencies(demo_fast["stderr"])
    assert len(figures) >= 2, figures
    labels = ("the exit evaluation's timing run", "the design comparison's timing run")
    for value, words in figures:
        assert any(label in words for label in labels), f"{value} ms without saying which measurement: {words!r}"
    final_row = re.search(r"\(final\)[^\n]*?(\d+\.\d+ ms \(IQR \d+\.\d+\))", page)
    caption = re.search(r"full model (\d+\.\d+ ms \(IQR \d+\.\d+\)) in the exit evaluation's", page)
    assert final_row and caption and final_row.group(1) == caption.group(1), "the final layer's row is the full model"
    by_label = {label: {v for v, w in figures if label in w} for label in labels}
    for label, values in by_label.items():
        assert len({round(float(v), 1) for v in values}) <= 1, (label, values)


def test_the_report_shows_the_baselines_beside_the_exit_designs(demo_fast):
    import json

    result = json.loads((demo_fast["study"] / "designs" / "result.json").read_text())
    (baseline,) = result["baselines"]
    assert baseline["fraction"] == 0.5 and baseline["measured_speedup"]["ratio"] > 0
    assert any(f.get("det_token_indices") for f in result["folders"])  # the det-token design ran
    page = html.unescape(re.sub(r"<[^>]+>", " ", (demo_fast["study"] / "report.html").read_text()))
    card = "Instead of exits (the same held-out images and timing run): "
    assert f"{card}{baseline['name']}, AP50 {baseline['AP50']:.3f} at" in " ".join(page.split())
    assert "designs-vs-baselines.csv" in (demo_fast["study"] / "report.html").read_text()


def test_the_report_fits_a_laptop_screen(demo_fast):
    browser = _browser(1366, 768)
    try:
        browser.set_window_size(1366, 768)
        browser.get((demo_fast["study"] / "report.html").resolve().as_uri())
        page = browser.execute_script(
            "const d = document.documentElement, a = document.getElementById('answer').getBoundingClientRect();"
            "return [d.scrollWidth, window.innerWidth, a.bottom + window.scrollY];"
        )
        boxes = browser.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => {"
            "  const box = t.parentElement, r = box.getBoundingClientRect();"
            "  return [box.className, r.left, r.right, getComputedStyle(box).overflowX,"
            "          t.scrollWidth > box.clientWidth]; });"
        )
    finally:
        browser.quit()
    scroll_width, inner_width, answer_bottom = page
    assert scroll_width <= 1366 and scroll_width <= inner_width, f"the page is {scroll_width} px wide"
    assert answer_bottom <= 768, f"the answer card ends at {answer_bottom} px, below the first screen"
    assert boxes, "no tables"
    for name, left, right, overflow, wider in boxes:
        assert name == "table" and left >= 0 and right <= inner_width, (name, left, right)
        assert overflow == "auto" or not wider, "a table wider than its box that cannot scroll inside it"


def test_log_file_and_quiet_work_on_any_command(tmp_path):
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    log = tmp_path / "probe-kit.log"
    scenes = tmp_path / "s"
    done = CliRunner().invoke(
        cli, ["--quiet", "--log-file", str(log), "data", "synth", "--out", str(scenes), "--frames", "3"]
    )
    assert done.exit_code == 0 and done.stderr == "", done.output
    refused = CliRunner().invoke(cli, ["--log-file", str(log), "cache", "info", str(tmp_path / "missing.h5")])
    assert refused.exit_code == 1
    lines = log.read_text().splitlines()
    assert lines[0].startswith("$ probe-kit ") and re.search(r"  # \d{4}-\d\d-\d\dT", lines[0])  # the command, when
    assert f"wrote 3 frames to {scenes} (seed 0)" in lines
    assert lines[-1] == f"Error: {tmp_path / 'missing.h5'}: no such cache file"
    assert "\r" not in log.read_text()
    nowhere = CliRunner().invoke(cli, ["--log-file", str(tmp_path / "no" / "x.log"), "cache", "info", "c.h5"])
    assert (
        nowhere.exit_code == 1 and nowhere.output == f"Error: {tmp_path / 'no' / 'x.log'}: No such file or directory\n"
    )


def test_progress_bars_are_drawn_on_a_terminal_only(monkeypatch, capsys):
    from probe_kit import console

    class Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty, self.text = tty, ""

        def isatty(self) -> bool:
            return self.tty

        def write(self, text: str) -> int:
            self.text += text
            return len(text)

        def flush(self) -> None:
            pass

    for tty, quiet, drawn in ((True, False, True), (False, False, False), (True, True, False)):
        stream = Terminal(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        console.set_quiet(quiet)
        for _ in console.progress_bar(range(3), desc="work"):
            pass
        assert ("work: 100%" in stream.text) == drawn, (tty, quiet, stream.text)
    console.set_quiet(False)
