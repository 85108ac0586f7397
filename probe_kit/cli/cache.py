"""``probe-kit cache``: extract hidden states to HDF5; ``cache info|verify FILE``, ``cache compare FILE REFERENCE``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from probe_kit.cli.options import build_data_spec, build_model_spec, data_options, model_options
from probe_kit.cli.outputs import RESUMABLE, check_outputs, file_out


@click.group("cache", invoke_without_command=True)
@model_options
@data_options
@click.option("--layers", default="all", show_default=True, help="all | 3,6,9,12 | 1-4 | -1 | embeddings")
@click.option("--tokens", default="det", show_default=True, help="Comma-separated subset of det,patch,cls.")
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="Storage type of the features.",
)
@click.option("--attention", is_flag=True, help="Also store det-token attention rollout and raw attention rows.")
@click.option("--head-fusion", type=click.Choice(["mean", "max", "min"]), default="mean", show_default=True)
@click.option(
    "--discard-ratio",
    type=float,
    default=0.0,
    show_default=True,
    help="Rollout: zero this fraction of each row's weakest attention entries.",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Cache file, e.g. feature_cache/NAME.h5")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the cache's size, the disk it lands on and what reading it takes; write nothing.",
)
@click.pass_context
def command(
    ctx,
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
    layers,
    tokens,
    dtype,
    attention,
    head_fusion,
    discard_ratio,
    out,
    dry_run,
) -> None:
    """Cache the hidden states of every chosen layer over a dataset (resumes an interrupted run)."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise click.UsageError("--out is required")
    check_outputs(file_out(out, RESUMABLE))  # before the model loads
    from probe_kit import distributed
    from probe_kit.cache.shards import cache_dataset

    data_spec = build_data_spec(data, sequences, split, min_visibility, stride, detector)
    model_spec = build_model_spec(model, revision, device, model_dtype, shortest_edge)
    token_list = [t.strip() for t in tokens.split(",")]
    if dry_run:
        from probe_kit.cache.plan import plan_cache

        plan = plan_cache(model_spec, data_spec, layers, token_list, out, dtype, attention)
        click.echo("\n".join(f"dry run: {line}" for line in plan.lines()))
        return
    path = cache_dataset(
        out,
        model_spec=model_spec,
        data_spec=data_spec,
        layers=layers,
        tokens=token_list,
        dtype=dtype,
        batch_size=batch_size,
        attention=attention,
        head_fusion=head_fusion,
        discard_ratio=discard_ratio,
    )
    if distributed.is_main():
        click.echo(f"cache complete: {path}")


@command.command("info")
@click.argument("file", type=click.Path(path_type=Path))
def info(file: Path) -> None:
    """Print what a cache holds."""
    from probe_kit.cache.reader import FeatureCache

    with FeatureCache(file, allow_incomplete=True) as cache:
        model = cache.model
        lines = [
            f"file:         {file}",
            f"complete:     {cache.complete} ({cache.num_images} of {cache.num_images_total} images)",
            f"fingerprint:  {cache.fingerprint}",
            f"model:        {model['name']} ({_revision(model['revision'])}weights {model['fingerprint']})",
            f"dataset:      {cache.dataset['kind']}:{cache.dataset['path']}",
            f"data:         {_data_line(cache.attrs().get('data'))}",
            f"skipped:      {_skipped_line(cache.attrs().get('skipped_frames'))}",
            f"layers:       {', '.join(map(str, cache.layers))}",
            f"tokens:       {', '.join(cache.tokens)} ({cache.options['dtype']})",
            f"attention:    {_attention_line(cache.options)}",
            f"det tokens:   {cache.layout.num_det}; patch grid {cache.layout.grid_h}x{cache.layout.grid_w}",
            f"created:      {cache.attrs()['created']}",
            f"shards:       {_shards_line(cache)}",
            f"versions:     {json.loads(cache.attrs()['versions'])}",
        ]
    click.echo("\n".join(lines))


@command.command("verify")
@click.argument("file", type=click.Path(path_type=Path))
def verify(file: Path) -> None:
    """Re-hash the cache's dataset (every image and annotation file) and check every feature against the checksum
    recorded as it was written; exit 1 naming the first difference."""
    from probe_kit.cache.reader import FeatureCache

    with FeatureCache(file, allow_incomplete=True) as cache:
        cache.verify(progress=True)
        images, files = cache.num_images_total, len(json.loads(cache.attrs()["data"])["files"])
        features = len(json.loads(cache.attrs()["checksummed"]))
    click.echo(
        f"OK: {file} matches its dataset ({images} images, {files} annotation files, sha256) and its {features} "
        "feature and output datasets their checksums"
    )


@command.command("compare")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("reference", type=click.Path(path_type=Path))
def compare(file: Path, reference: Path) -> None:
    """Check that FILE equals REFERENCE as two runs of the same inputs promise (docs/cache-format.md):
    exact data and layout, computed floats within a stated tolerance; exit 1 naming the first difference."""
    from probe_kit.cache.compare import FLOAT32_RTOL, compare_caches
    from probe_kit.errors import UserError

    problems = compare_caches(file, reference)
    if problems:
        more = f" (and {len(problems) - 1} more datasets or attributes)" if len(problems) > 1 else ""
        raise UserError(f"{file} differs from {reference}: {problems[0]}{more}")
    click.echo(f"equivalent: {file} and {reference} (computed floats within {FLOAT32_RTOL:g} of each dataset's scale)")


def _data_line(record: str | None) -> str:
    if record is None:
        return "not recorded"
    data = json.loads(record)
    return f"{data['num_images']} images and {len(data['files'])} annotation files, sha256 {data['images'][:16]}"


def _skipped_line(record: str | None) -> str:
    if record is None:
        return "not recorded"
    counts = json.loads(record)
    if not counts:
        return "no frame (every frame listed has its image)"
    listed = ", ".join(f"{name} {count}" for name, count in counts.items())
    return f"{sum(counts.values())} listed frames had no image file ({listed})"


def _attention_line(options: dict) -> str:
    if not options.get("attention"):
        return "not cached"
    return f"rollout + raw det rows (head fusion {options['head_fusion']}, discard {options['discard_ratio']})"


def _shards_line(cache) -> str:
    names = json.loads(cache.attrs().get("shards", "[]"))
    if not names:
        return "none (one file)"
    return f"{len(names)} in {cache.path.resolve().parent}: {', '.join(names)}"


@command.command("merge")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The single-file cache to write.")
def merge(file: Path, out: Path) -> None:
    """Copy a sharded cache (written under torchrun) into one ordinary file, e.g. to move it."""
    from probe_kit import distributed
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.cache.shards import merge as merge_shards

    def work() -> Path:
        FeatureCache(file).close()  # refuses anything but a finished cache, in one line
        return merge_shards(file, out)

    distributed.on_rank_zero(work)
    if distributed.is_main():
        click.echo(f"merged: {out}")


def _revision(revision: str | None) -> str:
    return f"revision {revision}, " if revision else ""
