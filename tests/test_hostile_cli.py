"""A hostile user at the command line: every error they can cause ends in one line naming the culprit.

Each case runs one command through click's CliRunner inside a workspace folder and checks: exit code
(1, or 2 for a bad command line), exactly one line on stderr that starts with ``Error:`` and names the
culprit, no traceback, no exception other than the CLI's exit, and the workspace and every shared
input byte-for-byte as before (nothing created, nothing changed, nothing half-written or hidden).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import write_tiny_cache

from probe_kit.cli.main import cli


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (hidden ones too) with the sha256 of its bytes."""
    found = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints that are not (whole) YOLOS detectors, saved with save_pretrained."""
    import torch
    from conftest import make_tiny_yolos
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("checkpoints")
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    BertModel(BertConfig(vocab_size=50, **small)).save_pretrained(root / "bert")
    ViTModel(ViTConfig(image_size=32, patch_size=16, **small)).save_pretrained(root / "vit")
    yolos = make_tiny_yolos(root / "yolos", layers=2)
    weights = load_file(yolos / "model.safetensors")
    for name, change in {
        "headless": lambda w: {k: v for k, v in w.items() if not k.startswith("bbox_predictor")},
        "extra": lambda w: {**w, "vit.extra_projection.weight": torch.zeros(2, 2)},
    }.items():
        folder = root / name
        folder.mkdir()
        for item in ("config.json", "preprocessor_config.json"):
            (folder / item).write_bytes((yolos / item).read_bytes())
        save_file(change(weights), folder / "model.safetensors", metadata={"format": "pt"})
    pickled = root / "pickled"
    pickled.mkdir()
    for item in ("config.json", "preprocessor_config.json"):
        (pickled / item).write_bytes((yolos / item).read_bytes())
    marker = root / "PICKLE_RAN"
    torch.save({"x": _RunsCode(f"touch {marker}")}, pickled / "pytorch_model.bin")
    return {"bert": root / "bert", "vit": root / "vit", "headless": root / "headless", "extra": root / "extra",
            "pickled": pickled, "marker": marker, "root": root}  # fmt: skip


class _RunsCode:
    """Pickles to ``os.system(command)``: what a hostile ``pytorch_model.bin`` would run if unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def cache(tiny_model, synth_dir, tmp_path_factory) -> Path:
    return write_tiny_cache(tiny_model, synth_dir, tmp_path_factory.mktemp("hostile") / "c.h5", layers="2,4")


@pytest.fixture(scope="module")
def unwritable() -> Path:
    """A folder this process cannot create anything in: chmod 555 for a normal user; /sys for root."""
    if os.geteuid() != 0:
        folder = Path(tempfile.mkdtemp(prefix="probe-kit-ro-"))
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        folder.rmdir()
        return
    folder = Path("/sys")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        yield folder
        return
    pytest.skip("no folder that root cannot write in (no /sys)")


def _experiment(ws: Path, **settings) -> Path:
    path = ws / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "synth": {"frames": 4}, **settings}))
    return path


def _result(ws: Path, text: str) -> Path:
    (ws / "results" / "lens").mkdir(parents=True)
    (ws / "results" / "lens" / "result.json").write_text(text)
    return ws / "results"


# (id, setup(ws, ctx) -> args, culprit named on the line, exit code)
CASES = [
    # analyzer options: -o values checked against each option's declared type and range, before any work
    ("o-epochs-abc", lambda ws, c: ["analyze", "probe-mlp", "--cache", c["cache"], "-o", "epochs=abc"], "-o epochs", 1),
    (
        "o-val-fraction-abc",
        lambda ws, c: ["analyze", "lens", "--cache", c["cache"], "-o", "val_fraction=abc"],
        "-o val_fraction",
        1,
    ),
    (
        "o-batch-size-0",
        lambda ws, c: ["analyze", "tuned-lens", "--cache", c["cache"], "-o", "batch_size=0"],
        "-o batch_size",
        1,
    ),
    (
        "o-val-fraction-2",
        lambda ws, c: ["analyze", "probe-linear", "--cache", c["cache"], "-o", "val_fraction=2"],
        "-o val_fraction",
        1,
    ),
    ("o-lr-nan", lambda ws, c: ["analyze", "probe-linear", "--cache", c["cache"], "-o", "lr=nan"], "-o lr", 1),
    ("o-head-choice", lambda ws, c: ["analyze", "probe-dense", "--cache", c["cache"], "-o", "head=conv"], "-o head", 1),
    (
        "o-flag-text",
        lambda ws, c: ["analyze", "probe-mlp", "--cache", c["cache"], "-o", "init_from_head=maybe"],
        "-o init_from_head",
        1,
    ),
    (
        "o-unknown",
        lambda ws, c: ["analyze", "lens", "--cache", c["cache"], "-o", "epochs=3"],
        "unknown option 'epochs'",
        1,
    ),
    ("o-no-equals", lambda ws, c: ["analyze", "lens", "--cache", c["cache"], "-o", "epochs"], "--option", 2),
    # output paths: the wrong kind, under a file, unwritable; refused before any work
    ("analyze-out-file", lambda ws, c: ["analyze", "lens", "--cache", c["cache"], "--out", ws / "afile"], "--out", 1),
    (
        "analyze-out-unwritable",
        lambda ws, c: ["analyze", "lens", "--cache", c["cache"], "--out", c["ro"] / "r"],
        "--out",
        1,
    ),
    ("evaluate-out-dir", lambda ws, c: ["evaluate", "--cache", c["cache"], "--out", ws / "adir"], "--out", 1),
    (
        "evaluate-out-under-file",
        lambda ws, c: ["evaluate", "--cache", c["cache"], "--out", ws / "afile" / "m.json"],
        "afile",
        1,
    ),
    (
        "evaluate-out-unwritable",
        lambda ws, c: ["evaluate", "--cache", c["cache"], "--out", c["ro"] / "m.json"],
        "--out",
        1,
    ),
    (
        "cache-out-dir",
        lambda ws, c: ["cache", "--model", c["model"], "--data", c["synth"], "--out", ws / "adir"],
        "--out",
        1,
    ),
    (
        "cache-out-unwritable",
        lambda ws, c: ["cache", "--model", c["model"], "--data", c["synth"], "--out", c["ro"] / "c.h5"],
        "--out",
        1,
    ),
    ("synth-out-unwritable", lambda ws, c: ["data", "synth", "--out", c["ro"] / "s", "--frames", 2], "--out", 1),
    (
        "export-coco-out-dir",
        lambda ws, c: ["data", "export-coco", "--data", c["synth"], "--out", ws / "adir"],
        "--out",
        1,
    ),
    (
        "train-exits-out-file",
        lambda ws, c: ["train-exits", "--cache", c["cache"], "--layers", "2", "--out", ws / "afile"],
        "--out",
        1,
    ),
    (
        "evaluate-exits-out-file",
        lambda ws, c: ["evaluate-exits", "--exits", ws / "adir", "--data", c["synth"], "--out", ws / "afile"],
        "--out",
        1,
    ),
    ("report-out-dir", lambda ws, c: ["report", "--results", ws / "study", "--out", ws / "adir"], "--out", 1),
    (
        "report-out-unwritable",
        lambda ws, c: ["report", "--results", ws / "study", "--out", c["ro"] / "r.html"],
        "--out",
        1,
    ),
    (
        "decide-out-dir",
        lambda ws, c: ["decide", "--results", ws / "study" / "results", "--out", ws / "adir"],
        "--out",
        1,
    ),
    ("run-out-file", lambda ws, c: ["run", _experiment(ws), "--out", ws / "afile"], "--out", 1),
    ("demo-out-file", lambda ws, c: ["demo", "--out", ws / "afile"], "--out", 1),
    ("reference-train-out-file", lambda ws, c: ["reference", "train", "--out", ws / "afile"], "--out", 1),
    ("reference-export-heldout-file", lambda ws, c: ["reference", "export", "--heldout", ws / "afile"], "--heldout", 1),
    (
        "train-exits-epochs-0",
        lambda ws, c: ["train-exits", "--cache", c["cache"], "--layers", "2", "--epochs", 0, "--out", ws / "ex"],
        "--epochs: expected an integer >= 1",
        1,
    ),
    (
        "evaluate-exits-thresholds-text",
        lambda ws, c: ["evaluate-exits", "--exits", ws / "adir", "--data", c["synth"], "--thresholds", "0.5,abc"],
        "--thresholds",
        2,
    ),
    # evaluate-exits / train-exits flags: ranges and devices refused at parse time, naming the flag
    (
        "evaluate-exits-threads-0",
        lambda ws, c: [
            "evaluate-exits",
            "--exits",
            ws / "adir",
            "--data",
            c["synth"],
            "--out",
            ws / "e",
            "--threads",
            0,
        ],
        "--threads",
        2,
    ),
    (
        "evaluate-exits-timing-repeats-1",
        lambda ws, c: ["evaluate-exits", "--exits", ws / "adir", "--data", c["synth"], "--timing-repeats", 1],
        "--timing-repeats",
        2,
    ),
    (
        "evaluate-exits-thresholds-range",
        lambda ws, c: ["evaluate-exits", "--exits", ws / "adir", "--data", c["synth"], "--thresholds", "0.5,1.5"],
        "--thresholds",
        2,
    ),
    (
        "evaluate-exits-device-unknown",
        lambda ws, c: ["evaluate-exits", "--exits", ws / "adir", "--data", c["synth"], "--device", "foo"],
        "--device",
        2,
    ),
    (
        "evaluate-exits-max-loss-without-policies",
        lambda ws, c: [
            "evaluate-exits",
            "--exits",
            ws / "adir",
            "--data",
            c["synth"],
            "--out",
            ws / "e",
            "--max-ap50-loss",
            0.5,
        ],  # fmt: skip
        "--max-ap50-loss",
        2,
    ),
    (
        "train-exits-device-absent",
        lambda ws, c: [
            "train-exits",
            "--cache",
            c["cache"],
            "--layers",
            "2",
            "--out",
            ws / "ex",
            "--device",
            "cuda:99",
        ],
        "--device",
        2,
    ),
    (
        "train-exits-no-loss",
        lambda ws, c: [
            "train-exits",
            "--cache",
            c["cache"],
            "--layers",
            "2",
            "--out",
            ws / "ex",
            "--set-weight",
            0,
            "--distill-weight",
            0,
        ],  # fmt: skip
        "--set-weight) and distill_weight (--distill-weight) are both 0",
        1,
    ),
    (
        "train-exits-seed-negative",
        lambda ws, c: ["train-exits", "--cache", c["cache"], "--layers", "2", "--out", ws / "ex", "--seed", -1],
        "--seed",
        2,
    ),
    (
        "cache-reference-revision",
        lambda ws, c: ["cache", "--revision", "main", "--data", c["synth"], "--out", ws / "c.h5"],
        "--revision",
        2,
    ),
    (
        "cache-model-missing-folder",
        lambda ws, c: ["cache", "--model", "./no-such-model", "--data", c["synth"], "--out", ws / "c.h5"],
        "--model ./no-such-model: no such folder",
        1,
    ),
    (
        "cache-model-folder-without-config",
        lambda ws, c: ["cache", "--model", ws / "adir", "--data", c["synth"], "--out", ws / "c.h5"],
        "not a model folder (no config.json",
        1,
    ),
    # experiment YAML: every value typed and range-checked, naming the key, before any work
    (
        "yaml-analyzer-not-mapping",
        lambda ws, c: ["run", _experiment(ws, analyzers={"lens": 5}), "--out", ws / "o"],
        "analyzers.lens",
        1,
    ),
    (
        "yaml-synth-frames-text",
        lambda ws, c: ["run", _experiment(ws, synth={"frames": "eight"}), "--out", ws / "o"],
        "synth.frames",
        1,
    ),
    (
        "yaml-analyzer-option-type",
        lambda ws, c: ["run", _experiment(ws, analyzers={"probe-mlp": {"epochs": "ten"}}), "--out", ws / "o"],
        "analyzers.probe-mlp.epochs",
        1,
    ),
    (
        "yaml-analyzer-option-range",
        lambda ws, c: ["run", _experiment(ws, analyzers={"probe-mlp": {"val_fraction": 1.5}}), "--out", ws / "o"],
        "analyzers.probe-mlp.val_fraction",
        1,
    ),
    (
        "yaml-exits-option-type",
        lambda ws, c: ["run", _experiment(ws, exits={"epochs": "many"}), "--out", ws / "o"],
        "exits.epochs",
        1,
    ),
    (
        "yaml-exits-option-range",
        lambda ws, c: ["run", _experiment(ws, exits={"split_gap": 1}), "--out", ws / "o"],
        "exits.split_gap",
        1,
    ),
    (
        "yaml-layers-reversed",
        lambda ws, c: ["run", _experiment(ws, layers="3-1,6"), "--out", ws / "o"],
        "layers: '3-1,6': range '3-1' is reversed",
        1,
    ),
    (
        "yaml-exit-layers-text",
        lambda ws, c: ["run", _experiment(ws, exits={"layers": "four"}), "--out", ws / "o"],
        "exits.layers",
        1,
    ),
    (
        "yaml-model-not-yolos",
        lambda ws, c: ["run", _experiment(ws, model=str(c["bert"])), "--out", ws / "o"],
        "model: config.json says model_type 'bert'",
        1,
    ),
    (
        "yaml-reference-revision",
        lambda ws, c: ["run", _experiment(ws, revision="main"), "--out", ws / "o"],
        "exp.yaml: revision",
        1,
    ),
    (
        "yaml-device-absent",
        lambda ws, c: ["run", _experiment(ws, device="cuda:99"), "--out", ws / "o"],
        "exp.yaml: device cuda:99",
        1,
    ),
    ("yaml-batch-size-0", lambda ws, c: ["run", _experiment(ws, batch_size=0), "--out", ws / "o"], "batch_size", 1),
    (
        "yaml-tokens-unknown",
        lambda ws, c: ["run", _experiment(ws, tokens=["det", "cls_token"]), "--out", ws / "o"],
        "tokens[1]",
        1,
    ),
    ("yaml-name-path", lambda ws, c: ["run", _experiment(ws, name="../escape")], "name", 1),
    (
        "yaml-not-mapping",
        lambda ws, c: ["run", (ws / "list.yaml", (ws / "list.yaml").write_text("- a\n"))[0]],
        "list.yaml",
        1,
    ),
    (
        "yaml-binary",
        lambda ws, c: ["run", (ws / "bin.yaml", (ws / "bin.yaml").write_bytes(b"\xff\xfe\x00"))[0]],
        "bin.yaml",
        1,
    ),
    # models: only whole YOLOS detectors load; a pickled weights file is never executed
    (
        "model-bert",
        lambda ws, c: ["evaluate", "--model", c["bert"], "--data", c["synth"], "--out", ws / "m.json"],
        "model_type 'bert'",
        1,
    ),
    (
        "model-vit",
        lambda ws, c: ["evaluate", "--model", c["vit"], "--data", c["synth"], "--out", ws / "m.json"],
        "model_type 'vit'",
        1,
    ),
    (
        "model-missing-weights",
        lambda ws, c: ["evaluate", "--model", c["headless"], "--data", c["synth"], "--out", ws / "m.json"],
        "missing (e.g. bbox_predictor",
        1,
    ),
    (
        "model-unexpected-weights",
        lambda ws, c: ["evaluate", "--model", c["extra"], "--data", c["synth"], "--out", ws / "m.json"],
        "unexpected (e.g. vit.extra_projection.weight",
        1,
    ),
    (
        "model-pickle",
        lambda ws, c: ["evaluate", "--model", c["pickled"], "--data", c["synth"], "--out", ws / "m.json"],
        "pickle",
        1,
    ),
    # results: a corrupt result.json, or one without "analyzer", named
    (
        "decide-corrupt-result",
        lambda ws, c: ["decide", "--results", _result(ws, "{not json"), "--out", ws / "d.json"],
        "lens/result.json",
        1,
    ),
    (
        "decide-result-no-analyzer",
        lambda ws, c: ["decide", "--results", _result(ws, '{"layers": {}}'), "--out", ws / "d.json"],
        "lens/result.json: analyzer",
        1,
    ),
    (
        "report-corrupt-result",
        lambda ws, c: ["report", "--results", _result(ws, "[1, 2"), "--out", ws / "r.html"],
        "lens/result.json",
        1,
    ),
    # the command line itself
    ("root-unknown-option", lambda ws, c: ["--bogus"], "--bogus", 2),
    ("synth-frames-text", lambda ws, c: ["data", "synth", "--out", ws / "s", "--frames", "abc"], "--frames", 2),
]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A folder with a file, an empty folder and a minimal study (one real-looking lens result)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("precious\n")
    (tmp_path / "adir").mkdir()
    results = tmp_path / "study" / "results" / "lens"
    results.mkdir(parents=True)
    lens = {"analyzer": "lens", "options": {}, "seed": 0, "cache_fingerprint": "x", "layers": {"4": {"AP50": 0.5}}}
    (results / "result.json").write_text(json.dumps(lens))
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_naming_the_culprit(case, workspace, cache, tiny_model, synth_dir, checkpoints,
                                                      unwritable):  # fmt: skip
    name, setup, culprit, code = case
    context = {"cache": cache, "model": tiny_model, "synth": f"synth:{synth_dir}", "ro": unwritable, **checkpoints}
    args = [str(a) for a in setup(workspace, context)]
    inputs = (cache, tiny_model, synth_dir, checkpoints["root"])
    before = _snapshot(workspace, *inputs)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, SystemExit), f"{name}: {result.exception!r} escaped the error boundary"
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{name}: stderr was {result.stderr!r}"
    assert culprit in lines[0], f"{name}: {culprit!r} not named in {lines[0]!r}"
    assert "Traceback" not in result.output
    assert _snapshot(workspace, *inputs) == before, f"{name}: something was left behind or changed"
    assert not checkpoints["marker"].exists(), "the pickled weights file was executed"


def test_programming_errors_keep_their_traceback(workspace, monkeypatch):
    """Only the user's errors become one line: a TypeError (a bug) escapes with its traceback."""
    import probe_kit.api

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(probe_kit.api, "build_report", broken)
    result = CliRunner().invoke(cli, ["report", "--results", str(workspace / "study"), "--out", "r.html"])
    assert isinstance(result.exception, TypeError) and result.exit_code == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_user_errors(workspace, how):
    args = ["--debug"] * (how == "flag") + ["cache", "info", "missing.h5"]
    env = {"PROBE_KIT_DEBUG": "1"} if how == "env" else {}
    result = CliRunner(env=env).invoke(cli, args)
    assert isinstance(result.exception, ValueError) and "missing.h5" in str(result.exception)
    quiet = CliRunner().invoke(cli, ["cache", "info", "missing.h5"])
    assert isinstance(quiet.exception, SystemExit) and quiet.stderr.strip() == "Error: missing.h5: no such cache file"


def test_options_are_typed_by_their_declaration(cache, tmp_path):
    """-o text becomes the option's declared type, and the result records the typed value."""
    out = tmp_path / "lens"
    result = CliRunner().invoke(
        cli, ["analyze", "lens", "--cache", str(cache), "--layers", "2,4", "-o", "val_fraction=0.4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "result.json").read_text())
    assert saved["options"]["val_fraction"] == 0.4 and isinstance(saved["options"]["val_fraction"], float)


def test_guarded_outputs_remove_what_a_failed_run_created_and_nothing_else(tmp_path):
    """A failure (or Ctrl-C) inside ``guarded`` removes the outputs and folders the run created, and only those."""
    from probe_kit.cli.outputs import ANALYSIS, DECISION, dir_out, file_out, guarded

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.json").write_text('{"verdict": "not viable", "exits": [12], "criteria": {}}')  # a decision
    new_dir, new_file = tmp_path / "new" / "deeper" / "out", kept / "m.json"
    outputs = dir_out(new_dir, ANALYSIS), file_out(new_file, DECISION), file_out(kept / "old.json", DECISION)
    with pytest.raises(KeyboardInterrupt), guarded(*outputs):
        new_dir.mkdir(parents=True)
        (new_dir / "partial.npz").write_bytes(b"x")
        new_file.write_text("half")
        (kept / "old.json").write_text('{"changed": 1}')  # existed before: the run's own business
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists() and not new_file.exists()
    assert sorted(p.name for p in kept.iterdir()) == ["old.json"]
    with guarded(dir_out(new_dir, ANALYSIS)):
        new_dir.mkdir(parents=True)
    assert new_dir.is_dir()  # success keeps everything
