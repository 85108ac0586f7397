"""``probe-kit evaluate``: COCO mAP of a model's own detections (cache, live run, or files)."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.options import FloatList, build_data_spec, build_model_spec, data_options, model_options

_INPUT = click.Path(dir_okay=False, path_type=Path)
_SOURCES = "--cache FILE | --model M with --data SPEC | --gt FILE with --detections FILE"


@click.command("evaluate")
@click.option(
    "--cache",
    "cache_path",
    type=_INPUT,
    default=None,
    help="Score the final outputs stored in this cache.",
)
@click.option("--gt", type=_INPUT, default=None, help="COCO ground-truth JSON to re-score (with --detections).")
@click.option("--detections", type=_INPUT, default=None, help="COCO results JSON to re-score (with --gt).")
@model_options
@data_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="metrics.json to write.")
@click.option(
    "--detections-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write COCO-format detections (default: next to --out).",
)
@click.option(
    "--thresholds",
    type=FloatList(0.0, 1.0),
    default="0.3,0.5,0.7",
    show_default=True,
    help="Score thresholds for precision/recall/F1 (AP itself never uses one).",
)
def command(
    cache_path,
    gt,
    detections,
    model,
    revision,
    device,
    model_dtype,
    shortest_edge,
    batch_size,
    data,
    sequences,
    split,
    min_visibility,
    stride,
    detector,
    out,
    detections_out,
    thresholds,
) -> None:
    """COCO AP/AP50/AP75/APs/m/l/AR100 on the full ranked list, plus P/R/F1 at thresholds.

    One of: --cache F | --data SPEC [--model M] (live run) | --gt gt.json --detections dets.json.
    """
    from probe_kit import distributed
    from probe_kit.cli.outputs import DETECTIONS, METRICS, file_out, guarded
    from probe_kit.io import write_json

    source = _source(cache_path, gt, detections, data)
    narrowing = {
        "--sequences": sequences,
        "--split": split,
        "--min-visibility": min_visibility,
        "--stride": stride,
        "--detector": detector,
    }
    ignored = [name for name, value in narrowing.items() if value is not None]
    if ignored and source != "model":
        given = "--cache" if source == "cache" else "--gt/--detections"
        raise click.UsageError(f"{', '.join(ignored)}: narrow --data only; {given} is scored whole")
    dets_path = None
    if source != "files":
        dets_path = detections_out or out.with_name(out.stem + "_detections.json")
    elif detections_out:
        raise click.UsageError("--detections-out: --gt/--detections runs write no detections; leave it out")
    _refuse_clashes(out, dets_path, cache_path, gt, detections)
    with guarded(file_out(out, METRICS), file_out(dets_path, DETECTIONS, "--detections-out")):
        if source == "files":
            metrics, dets, record = _score_files(gt, detections, thresholds)
        elif source == "cache":
            from probe_kit.cache.evaluate import evaluate_cache

            metrics, dets = evaluate_cache(cache_path, thresholds)
            record = {"cache": str(cache_path)}
        else:
            from probe_kit.models.evaluate import evaluate_model

            data_spec = build_data_spec(data, sequences, split, min_visibility, stride, detector)
            model_spec = build_model_spec(model, revision, device, model_dtype, shortest_edge)
            metrics, dets = evaluate_model(model_spec, data_spec, batch_size, thresholds)
            record = {"model": model, "data": data_spec.describe()}
        if dets is not None:
            record["detections_out"] = str(dets_path)
        if distributed.is_main():  # under torchrun every rank holds the gathered result; rank 0 writes it
            if dets is not None:
                write_json(dets_path, dets)
            write_json(out, {**metrics, "source": record})
    if not distributed.is_main():
        return
    click.echo(
        f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
        f"AR100 {metrics['AR100']:.4f}  ({metrics['num_images']} images) -> {out}"
    )


def _source(cache_path: Path | None, gt: Path | None, detections: Path | None, data: str | None) -> str:
    """Which of the three inputs was given: ``cache``, ``model`` (live run on --data) or ``files``."""
    given = {"cache": cache_path is not None, "model": data is not None, "files": bool(gt or detections)}
    chosen = [name for name, on in given.items() if on]
    if not chosen:
        raise click.UsageError(f"nothing to evaluate: give one of {_SOURCES}")
    if len(chosen) > 1:
        raise click.UsageError(f"give only one of {_SOURCES}")
    if chosen == ["files"] and not (gt and detections):
        raise click.UsageError("--gt and --detections go together")
    return chosen[0]


def _refuse_clashes(out: Path, dets_path: Path | None, *inputs: Path | None) -> None:
    """An output may not overwrite an input or the other output."""
    if dets_path is not None and dets_path.resolve() == out.resolve():
        raise click.UsageError(f"--detections-out {dets_path}: is the same file as --out")
    for given in inputs:
        for option, path in (("--out", out), ("--detections-out", dets_path)):
            if given is not None and path is not None and path.resolve() == given.resolve():
                raise click.UsageError(f"{option} {path}: is one of the inputs; choose another file")


def _score_files(gt: Path, detections: Path, thresholds: tuple[float, ...]) -> tuple[dict, None, dict]:
    """Re-score a COCO ground-truth file and a COCO results file (both validated, errors name the file)."""
    from probe_kit.io import read_json
    from probe_kit.metrics.coco import evaluate

    metrics = evaluate(
        read_json(gt, "COCO ground-truth"),
        read_json(detections, "COCO detections"),
        thresholds,
        names=(str(gt), str(detections)),
    )
    return metrics, None, {"gt": str(gt), "detections": str(detections)}
