"""``probe-kit evaluate``: COCO mAP of a model's own detections (cache, live run, or files)."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.options import build_data_spec, build_model_spec, data_options, model_options


@click.command("evaluate")
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Score the final outputs stored in this cache.",
)
@click.option("--gt", type=click.Path(path_type=Path), default=None, help="COCO ground-truth JSON to re-score.")
@click.option("--detections", type=click.Path(path_type=Path), default=None, help="COCO results JSON to re-score.")
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
    out,
    detections_out,
    thresholds,
) -> None:
    """COCO AP/AP50/AP75/APs/m/l/AR100 on the full ranked list, plus P/R/F1 at thresholds.

    One of: --cache F | --data SPEC [--model M] (live run) | --gt gt.json --detections dets.json.
    """
    from probe_kit import distributed
    from probe_kit.io import read_json, write_json
    from probe_kit.metrics.coco import evaluate

    cuts = tuple(float(t) for t in thresholds.split(","))
    if gt or detections:
        if not (gt and detections):
            raise click.UsageError("--gt and --detections go together")
        metrics = evaluate(read_json(gt, "COCO ground-truth"), read_json(detections, "COCO detections"), cuts)
        dets = None
        source = {"gt": str(gt), "detections": str(detections)}
    elif cache_path:
        from probe_kit.cache.evaluate import evaluate_cache

        metrics, dets = evaluate_cache(cache_path, cuts)
        source = {"cache": str(cache_path)}
    else:
        from probe_kit.models.evaluate import evaluate_model

        data_spec = build_data_spec(data, sequences, split, min_visibility, stride)
        model_spec = build_model_spec(model, revision, device, model_dtype, shortest_edge)
        metrics, dets = evaluate_model(model_spec, data_spec, batch_size, cuts)
        source = {"model": model, "data": data_spec.describe()}
    if not distributed.is_main():  # under torchrun every rank holds the gathered result; rank 0 writes it
        return
    if dets is not None:
        dets_path = detections_out or out.with_name(out.stem + "_detections.json")
        write_json(dets_path, dets)
        source["detections_out"] = str(dets_path)
    write_json(out, {**metrics, "source": source})
    click.echo(
        f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
        f"AR100 {metrics['AR100']:.4f}  ({metrics['num_images']} images) -> {out}"
    )
