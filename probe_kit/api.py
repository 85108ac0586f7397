"""The Python front door: one call per stage of a study, the same calls the CLI makes.

    import probe_kit as pk
    cache = pk.write_cache(model="reference", data="synth:data/synth", out="c.h5", tokens=("det", "patch"))
    lens = pk.analyze("lens", cache, layers="all")
    lens.layers[6]["AP50"]
    decision = pk.decide([lens, pk.analyze("flops", cache)])

Heavy libraries (torch, transformers) are imported inside the functions, and ``probe_kit``
re-exports these names lazily (PEP 562), so ``import probe_kit`` stays instant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probe_kit.analyzers import AnalyzerResult
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.decision.decide import Decision

_MODEL_KEYS = ("revision", "device", "dtype", "shortest_edge")
_DATA_KEYS = ("sequences", "split", "min_visibility", "stride")


def _split(options: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Pop ``keys`` present in ``options`` into their own dict."""
    return {key: options.pop(key) for key in keys if key in options}


def _refuse_unknown(stage: str, options: dict[str, Any], target: Any, known: Sequence[str] = (), taken=()) -> None:
    """Options ``target`` (a function or dataclass) does not take, nor ``known``, refused in one ``ValueError``
    naming them (rather than a ``TypeError`` from deep inside); ``taken``: parameters the stage fills itself."""
    import inspect

    accepted = (set(inspect.signature(target).parameters) - set(taken)) | set(known)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{stage}: unknown option(s) {unknown}; expected some of {sorted(accepted)}")


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"det,patch"`` or ``["det", "patch"]`` -> ``("det", "patch")``: a string is never read letter by letter."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value)


def data_spec(data, **narrowing):
    """``mot17:ROOT`` | ``coco:ANN.json[:IMAGES]`` | ``synth:DIR`` (+ sequences, split, min_visibility, stride);
    a ``DataSpec`` already built (the CLI's, checked flag by flag) is used as it is."""
    from probe_kit.data.spec import DataSpec, parse_data_spec

    if isinstance(data, DataSpec):
        if narrowing:
            raise ValueError(f"data: narrow a DataSpec when building it, not with {sorted(narrowing)}")
        return data
    if not isinstance(data, str):
        raise ValueError(f"data: expected a spec such as 'synth:DIR' or 'mot17:ROOT', got {data!r}")
    if isinstance(narrowing.get("sequences"), str):
        narrowing["sequences"] = tuple(s.strip() for s in narrowing["sequences"].split(","))
    return parse_data_spec(data, **narrowing)


def write_cache(
    model: str = "reference",
    data: str = "",
    out: str | Path = "feature_cache/cache.h5",
    layers: str | Sequence[int] = "all",
    tokens: Sequence[str] = ("det",),
    **options: Any,
) -> FeatureCache:
    """Cache the hidden states of ``layers`` over ``data`` into ``out`` (resumes) and open it.

    ``options``: the model's ``revision``, ``device``, ``dtype`` and ``shortest_edge``; the dataset's
    ``sequences``, ``split``, ``min_visibility`` and ``stride``; the writer's own (``dtype`` of the
    features is ``feature_dtype`` here, ``batch_size``, ``attention``, ``head_fusion``, ``discard_ratio``).
    """
    from probe_kit.cache.writer import write_cache as write
    from probe_kit.models.loading import ModelSpec

    options = dict(options)
    taken = ("model_spec", "data_spec", "layers", "tokens", "out", "dtype")
    _refuse_unknown("write_cache", options, write, (*_MODEL_KEYS, *_DATA_KEYS, "feature_dtype"), taken)
    model_spec = ModelSpec(name=model, **_split(options, _MODEL_KEYS))
    spec = data_spec(data, **_split(options, _DATA_KEYS))
    if "feature_dtype" in options:
        options["dtype"] = options.pop("feature_dtype")
    path = write(model_spec, spec, layers, list(_names(tokens)), Path(out), **options)
    return open_cache(path)


def open_cache(path: str | Path) -> FeatureCache:
    """A finished cache, read lazily layer by layer (close it, or use it as a context manager)."""
    from probe_kit.cache.reader import FeatureCache

    return FeatureCache(Path(path))


def _cache_path(cache: str | Path | FeatureCache) -> Path:
    return Path(cache.path) if hasattr(cache, "path") else Path(cache)


def analyze(
    name: str,
    cache: str | Path | FeatureCache,
    layers: str | Sequence[int] = "all",
    out: str | Path | None = None,
    seed: int = 0,
    **options: Any,
) -> AnalyzerResult:
    """Run analyzer ``name`` on ``layers`` of a cache; ``result.layers`` maps layer -> metrics.

    With ``out``, also writes ``out/result.json`` (and arrays) as ``probe-kit analyze`` does.
    """
    from probe_kit.analyzers import run_analyzer, write_result

    if not isinstance(layers, str):
        layers = ",".join(str(k) for k in layers)
    result = run_analyzer(name, _cache_path(cache), layers, seed=seed, **options)
    if out is not None:
        write_result(result, Path(out))
    return result


def decide(results: str | Path | Iterable[AnalyzerResult], **criteria: Any) -> Decision:
    """Recommended exits from a results folder or a list of analyzer results; ``criteria`` as the YAML ``decision:``
    key (``bars="3:0.30,6:0.50"`` or ``{3: 0.30}``, ``max_exits``, ...); analyzer roles from the registry."""
    from probe_kit.analyzers import analyzer_meta
    from probe_kit.decision.decide import criteria_from, load_results
    from probe_kit.decision.decide import decide as choose

    if isinstance(results, (str, Path)):
        evidence = load_results(Path(results))
    else:
        evidence = {result.name: result.to_json() for result in results}
    return choose(evidence, criteria_from(criteria, "decide"), roles=analyzer_meta())


def train_exits(
    cache: str | Path | FeatureCache,
    layers: str | Sequence[int],
    out: str | Path,
    seed: int = 0,
    head: str = "det",
    device: str = "cpu",
    **training: Any,
) -> Path:
    """Train ``head`` exit heads (``det``, ``dense`` or a registered type) for ``layers`` on a cache into ``out``.

    ``training`` as ``ExitTraining`` (epochs, lr, val_sequences, finetune_blocks, ...).
    """
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.distributed import check_device
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.registry import head_type
    from probe_kit.heads.training import train_exits as train
    from probe_kit.models.layers import resolve_layers

    head_type(head, "head")  # a name not registered is refused before any work
    _refuse_unknown("train_exits", training, ExitTraining)
    check_device(device, "device")
    path = _cache_path(cache)
    with FeatureCache(path) as opened:
        chosen = resolve_layers(layers, opened.depth)
    return train(path, chosen, Path(out), head, seed, ExitTraining(**training), device=device)


def evaluate_exits(exits: str | Path, data: str, out: str | Path | None = None, **options: Any) -> dict:
    """Static exits, the policy sweep and the operating point on held-out ``data`` (``result.json``'s dict)."""
    from probe_kit.heads.evaluate import evaluate_exits as evaluate
    from probe_kit.io import write_json

    options = dict(options)
    _refuse_unknown("evaluate_exits", options, evaluate, _DATA_KEYS, taken=("exits_dir", "data_spec"))
    result = evaluate(Path(exits), data_spec(data, **_split(options, _DATA_KEYS)), **options)
    if out is not None:
        write_json(Path(out) / "result.json", result)
    return result


def compare_designs(
    exits: str | Path | Sequence[str | Path], data: str, out: str | Path | None = None, **options: Any
) -> dict:
    """Every (exits folder, policy, threshold) on the same held-out ``data``: ``result.json``'s dict with
    ``designs``, the Pareto front and the latency check (options: ``heads.designs.compare_designs``)."""
    from probe_kit.heads.designs import compare_designs as compare
    from probe_kit.io import write_json

    options = dict(options)
    _refuse_unknown("compare_designs", options, compare, _DATA_KEYS, taken=("exits_dirs", "data_spec"))
    if isinstance(options.get("policies"), str):
        options["policies"] = _names(options["policies"])
    folders = [exits] if isinstance(exits, (str, Path)) else exits  # one folder is not a list of letters
    result = compare([Path(e) for e in folders], data_spec(data, **_split(options, _DATA_KEYS)), **options)
    if out is not None:
        write_json(Path(out) / "result.json", result)
    return result


def build_report(results_dir: str | Path, out: str | Path | None = None, strict: bool = False) -> Path:
    """Self-contained HTML report of a study folder (default ``results_dir/report.html``); ``strict``: refuse a
    study with stages not measured yet."""
    from probe_kit.report.build import build_report as build

    results_dir = Path(results_dir)
    return build(results_dir, Path(out) if out is not None else results_dir / "report.html", strict)


def missing_stages(results_dir: str | Path) -> list[str]:
    """What a study folder has not measured yet (analyzers, decision, exit heads), by name; ``[]`` when complete."""
    from probe_kit.report.collect import missing_stages as missing

    return missing(Path(results_dir))


def run_experiment(path: str | Path, out: str | Path | None = None) -> dict:
    """A whole study from its YAML (stages already done for the same inputs are skipped) -> the decision."""
    from probe_kit.experiment import load_experiment
    from probe_kit.experiment import run_experiment as run

    cfg = load_experiment(Path(path))
    return run(cfg, Path(out) if out is not None else Path("runs") / cfg.name)


def list_analyzers() -> list[str]:
    """Names of every registered analyzer (built-in and from the ``probe_kit.analyzers`` entry points)."""
    from probe_kit.analyzers import list_analyzers as listed

    return [info.name for info in listed()]


def register(*args: Any, **kwargs: Any):
    """``@probe_kit.register("name", "summary", role=..., ...)``: add an analyzer (see docs/analyzers.md)."""
    from probe_kit.analyzers._registry import register as add

    return add(*args, **kwargs)
