"""Run a whole study: data -> cache -> analyzers -> decide -> train exits -> evaluate exits -> report.

Every stage writes into the experiment folder and is skipped when its output already exists for
the same inputs: the cache by its identity (model, preprocessing, data, options), an analyzer by
the cache fingerprint, layers, options and seed recorded in its result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from probe_kit import distributed
from probe_kit.console import elapsed
from probe_kit.console import say as _say
from probe_kit.experiment.config import ExperimentConfig


@contextmanager
def _timed(name: str, say: Callable[[str], None], times: dict[str, float]) -> Iterator[None]:
    """``[name] done in 12.3 s`` as a stage ends; its seconds kept in ``times`` for the closing summary."""
    start = time.monotonic()
    yield
    times[name] = time.monotonic() - start
    say(f"[{name}] done in {elapsed(times[name])}")


def _synth_stage(cfg: ExperimentConfig, out: Path, say: Callable[[str], None]) -> str:
    from probe_kit.data.synth import SceneSpec, write_synth_dataset

    folder = out / "data"
    marker = folder / "synth.json"
    wanted = json.dumps(asdict(cfg.synth), sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted:
        say(f"[data] synthetic scenes up to date in {folder}")
        return f"synth:{folder}"
    say(f"[data] rendering {cfg.synth.frames} synthetic scenes (seed {cfg.synth.seed})")
    shutil.rmtree(folder, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".data."))
    try:
        spec = SceneSpec(cfg.synth.size, cfg.synth.size)
        write_synth_dataset(staging, cfg.synth.frames, cfg.synth.seed, spec, cfg.synth.frames_per_sequence)
        (staging / "synth.json").write_text(wanted)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"synth:{folder}"


def _cache_stage(cfg: ExperimentConfig, data_text: str, out: Path, say: Callable[[str], None]) -> Path:
    """The cache; under torchrun each process writes its shard and rank 0 joins them (``cache/shards.py``)."""
    from probe_kit.cache.shards import cache_dataset, remove_cache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.models.loading import ModelSpec

    path = out / "cache.h5"
    data_spec = parse_data_spec(
        data_text,
        sequences=cfg.sequences or None,
        split=cfg.split,
        min_visibility=cfg.min_visibility,
        stride=cfg.stride,
        detector=cfg.detector,
    )
    model_spec = ModelSpec(cfg.model, cfg.revision, cfg.device, shortest_edge=cfg.shortest_edge)
    say(f"[cache] {cfg.model} over {data_text} -> {path}")
    write = lambda: cache_dataset(
        path,
        model_spec=model_spec,
        data_spec=data_spec,
        layers=cfg.layers,
        tokens=cfg.tokens,
        batch_size=cfg.batch_size,
        attention=cfg.attention,
    )
    try:
        write()
    except ValueError as err:
        if "refusing to append" not in str(err):
            raise
        say(f"[cache] inputs changed ({err}); rebuilding")
        remove_cache(path)
        write()
    return path


def _inputs_key(fingerprint: str, name: str, layers: str, options: dict, seed: int) -> str:
    text = json.dumps([fingerprint, name, layers, options, seed], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _analyzer_stage(
    cfg: ExperimentConfig, cache_path: Path, out: Path, say: Callable[[str], None], times: dict[str, float]
) -> None:
    from probe_kit.analyzers import get_analyzer, run_analyzer, write_result
    from probe_kit.cache.reader import FeatureCache

    with FeatureCache(cache_path) as cache:
        fingerprint = cache.fingerprint
    for name, settings in cfg.analyzers.items():
        options = {k: v for k, v in settings.items() if k != "layers"}
        if cfg.val_sequences and "val_sequences" in get_analyzer(name).option_names():
            options.setdefault("val_sequences", tuple(cfg.val_sequences))
        layers = str(settings.get("layers", cfg.layers))
        key = _inputs_key(fingerprint, name, layers, options, cfg.seed)
        result_path = out / "results" / name / "result.json"
        if result_path.is_file() and json.loads(result_path.read_text()).get("inputs_key") == key:
            say(f"[analyze] {name}: up to date")
            continue
        say(f"[analyze] {name} on layers {layers}")
        if "device" in get_analyzer(name).option_names():  # a run-time choice: not part of the inputs key
            options.setdefault("device", cfg.device)
        with _timed(f"analyze {name}", say, times):
            result = run_analyzer(name, cache_path, layers, cfg.seed, **options)
            result.extra["inputs_key"] = key
            result.extra["command"] = f"probe-kit run (experiment {cfg.name!r}, analyzer {name})"
            write_result(result, result_path.parent)


_TIMING = ("images", "repeats", "warmup")  # exits.timing_<key> in the YAML -> heads.evaluate.Timing


def _exit_layers(cfg: ExperimentConfig, decision: dict, say: Callable[[str], None]) -> tuple[int, ...]:
    """The decision's exits; where it recommends none, the config's ``candidates`` (if any), said aloud."""
    chosen = cfg.exits.get("layers", "decision")
    if chosen != "decision":
        return tuple(int(v) for v in str(chosen).split(","))
    if len(decision["exits"]) > 1 or "candidates" not in cfg.exits:
        return tuple(decision["exits"])
    candidates = tuple(int(v) for v in str(cfg.exits["candidates"]).split(","))
    say(
        f"[exits] the decision recommends no early exit; training heads at the candidate layers "
        f"{list(candidates)} anyway, to measure what trained exit heads reach (the verdict stands)"
    )
    return candidates


def _exits_stage(
    cfg: ExperimentConfig, cache_path: Path, data_text: str, decision: dict, out: Path, say: Callable[[str], None]
) -> None:
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.heads.evaluate import DEFAULT_THRESHOLDS, Timing, evaluate_exits
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.store import stamp_inputs_key, up_to_date
    from probe_kit.heads.training import train_exits
    from probe_kit.io import write_json

    layers = _exit_layers(cfg, decision, say)
    with FeatureCache(cache_path) as cache:
        depth, fingerprint = cache.depth, cache.fingerprint
    if not [k for k in layers if k != depth]:
        say("[exits] no intermediate exit to train (decision: not viable); skipped")
        return
    training = {k: v for k, v in cfg.exits.items() if k in ExitTraining.__dataclass_fields__}
    if cfg.val_sequences:
        training.setdefault("val_sequences", tuple(cfg.val_sequences))
    opts = ExitTraining(**training)
    key = _inputs_key(fingerprint, "exits", ",".join(map(str, layers)), asdict(opts), cfg.seed)
    config_path = out / "exits" / "config.json"
    if up_to_date(out / "exits", key):
        say("[exits] exit heads up to date")
    else:
        say(f"[exits] training exit heads at layers {list(layers)}")
        train_exits(cache_path, layers, out / "exits", "det", cfg.seed, opts, device=cfg.device)
        stamp_inputs_key(out / "exits", key)
        (out / "exits_eval" / "result.json").unlink(missing_ok=True)
    eval_path = out / "exits_eval" / "result.json"
    if eval_path.is_file():
        say("[exits] evaluation up to date")
        return
    split = json.loads(config_path.read_text())["split"]
    options = {"sequences": tuple(split["val_groups"])} if split["unit"] == "sequence" else {}
    data_spec = parse_data_spec(
        data_text, stride=cfg.stride, min_visibility=cfg.min_visibility, detector=cfg.detector, **options
    )
    say(
        f"[exits] evaluating static exits and the adaptive policy on {split['val_images']} validation images"
        if options
        else "[exits] evaluating on the images that trained nothing (split by image: the heads' training and "
        "early-stopping images are dropped)"
    )
    thresholds = tuple(cfg.exits.get("thresholds", DEFAULT_THRESHOLDS))
    result = evaluate_exits(
        out / "exits",
        data_spec,
        thresholds,
        cfg.exits.get("policy", "confidence"),
        device=cfg.device,
        timing=Timing(**{k: cfg.exits[f"timing_{k}"] for k in _TIMING if cfg.exits.get(f"timing_{k}") is not None}),
        detections_dir=out / "exits_eval" / "detections",
    )
    result["evaluated_on"] = "validation sequences" if options else "images that trained nothing"
    write_json(eval_path, result)


def run_experiment(cfg: ExperimentConfig, out: Path, say: Callable[[str], None] = _say) -> dict:
    """Run every stage of ``cfg`` into ``out``; returns the decision as JSON. Says each stage's elapsed time as it
    ends, and the total with the slowest stages at the end."""
    from probe_kit.io import write_json

    out = Path(out)
    if not distributed.is_main():  # under torchrun rank 0 alone reports
        say = lambda _: None
    start, times = time.monotonic(), {}
    out.mkdir(parents=True, exist_ok=True)
    distributed.on_rank_zero(lambda: write_json(out / "experiment.json", asdict(cfg)))
    data_text = cfg.data
    if cfg.synth:
        with _timed("data", say, times):
            data_text = distributed.on_rank_zero(lambda: _synth_stage(cfg, out, say))
    with _timed("cache", say, times):
        cache_path = _cache_stage(cfg, data_text, out, say)  # under torchrun: one shard per process
    # Every later stage reads the cache or trains on it, and runs on rank 0 alone (the others wait).
    decision = distributed.on_rank_zero(lambda: _after_cache(cfg, data_text, cache_path, out, say, times))
    slowest = sorted(times.items(), key=lambda item: -item[1])[:3]
    say(
        f"[total] {elapsed(time.monotonic() - start)}; slowest: "
        + ", ".join(f"{name} {elapsed(seconds)}" for name, seconds in slowest)
    )
    return decision


def _after_cache(
    cfg: ExperimentConfig,
    data_text: str,
    cache_path: Path,
    out: Path,
    say: Callable[[str], None],
    times: dict[str, float],
) -> dict:
    """Analyzers -> decision -> exit heads -> report; returns the decision as JSON."""
    from probe_kit.analyzers import analyzer_meta
    from probe_kit.decision import criteria_from, decide, load_results
    from probe_kit.experiment.designs_stage import designs_stage
    from probe_kit.io import write_json
    from probe_kit.report import build_report

    _analyzer_stage(cfg, cache_path, out, say, times)
    decision = decide(load_results(out / "results"), criteria_from(cfg.decision), roles=analyzer_meta()).to_json()
    write_json(out / "results" / "decision.json", decision)
    say("[decide] " + "\n[decide] ".join(decision["rationale"]))
    with _timed("exits", say, times):
        _exits_stage(cfg, cache_path, data_text, decision, out, say)
    with _timed("designs", say, times):
        design = designs_stage(cfg, cache_path, data_text, out, say)  # exits: designs: (the exit-design comparison)
    if design is not None:
        decision["design"] = design
        write_json(out / "results" / "decision.json", decision)
    with _timed("report", say, times):
        report = build_report(out, out / "report.html")
    say(f"[report] {report}")
    return decision
