"""``probe-kit data``: make synthetic scenes, export ground truth as COCO JSON."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from probe_kit.cli.options import build_data_spec, data_options
from probe_kit.data.synth import MAX_SIZE, MIN_SIZE


@click.group("data")
def command() -> None:
    """Datasets: synthetic scenes and COCO export."""


def _parse_mix(ctx: click.Context, param: click.Parameter, text: str) -> dict[str, float]:
    """``easy=0.4,medium=0.35,hard=0.25`` -> weights; refused naming ``--mix`` (checked again by SceneSpec)."""
    from probe_kit.data.checks import parse_number
    from probe_kit.data.synth import DIFFICULTIES

    weights = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or name not in DIFFICULTIES or name in weights:
            raise click.BadParameter(f"{text!r}: expected each of {'/'.join(DIFFICULTIES)} at most once, as easy=0.4")
        try:
            weights[name] = parse_number(value, name, lo=0)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    if sum(weights.values()) <= 0:
        raise click.BadParameter(f"{text!r}: the weights must sum to a positive number")
    return weights


@command.command("synth")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to create (MOT17 layout).")
@click.option("--frames", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(MIN_SIZE, MAX_SIZE),
    default=256,
    show_default=True,
    help="Width and height in pixels.",
)
@click.option(
    "--mix",
    default="easy=0.4,medium=0.35,hard=0.25",
    show_default=True,
    callback=_parse_mix,
    help="Difficulty weights.",
)
@click.option("--frames-per-sequence", type=click.IntRange(1, 99_999), default=100, show_default=True)
def synth(out: Path, frames: int, seed: int, size: int, mix: dict[str, float], frames_per_sequence: int) -> None:
    """Write deterministic synthetic street scenes in the MOT17 layout."""
    from probe_kit.cli.outputs import NEW_FOLDER, dir_out, guarded
    from probe_kit.data.synth import SceneSpec, write_synth_dataset

    spec = SceneSpec(size, size, mix)
    with guarded(dir_out(out, NEW_FOLDER)):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            write_synth_dataset(staging, frames, seed, spec, frames_per_sequence)
            if out.exists():
                out.rmdir()
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    click.echo(f"wrote {frames} frames to {out} (seed {seed})")


@command.command("export-coco")
@data_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="COCO ground-truth JSON to write.")
def export_coco(data, sequences, split, min_visibility, stride, detector, out: Path) -> None:
    """Write a dataset's ground truth as COCO JSON (ignore regions as iscrowd: 1)."""
    from probe_kit.cli.outputs import COCO_GROUND_TRUTH, file_out, guarded
    from probe_kit.io import write_json
    from probe_kit.metrics.coco import ground_truth_dict

    spec = build_data_spec(data, sequences, split, min_visibility, stride, detector)
    if Path(spec.path).resolve() == out.resolve():
        raise click.UsageError(f"--out {out}: is the --data annotations file; choose another file")
    with guarded(file_out(out, COCO_GROUND_TRUTH)):
        gt = ground_truth_dict(spec.load())
        write_json(out, gt)
    click.echo(f"wrote {len(gt['images'])} images, {len(gt['annotations'])} annotations to {out}")
