"""``probe-kit data``: make synthetic scenes, export ground truth as COCO JSON."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from probe_kit.cli.options import build_data_spec, data_options


@click.group("data")
def command() -> None:
    """Datasets: synthetic scenes and COCO export."""


def _parse_mix(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected easy=0.4,medium=0.35,hard=0.25") from None


@command.command("synth")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to create (MOT17 layout).")
@click.option("--frames", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=256, show_default=True, help="Width and height in pixels.")
@click.option("--mix", default="easy=0.4,medium=0.35,hard=0.25", show_default=True, help="Difficulty weights.")
@click.option("--frames-per-sequence", type=int, default=100, show_default=True)
def synth(out: Path, frames: int, seed: int, size: int, mix: str, frames_per_sequence: int) -> None:
    """Write deterministic synthetic street scenes in the MOT17 layout."""
    from probe_kit.data.synth import SceneSpec, write_synth_dataset

    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{out}: exists and is not empty")
    spec = SceneSpec(size, size, _parse_mix(mix))
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
@click.option("--out", type=click.Path(path_type=Path), required=True)
def export_coco(data, sequences, split, min_visibility, stride, out: Path) -> None:
    """Write a dataset's ground truth as COCO JSON (ignore regions as iscrowd: 1)."""
    from probe_kit.io import write_json
    from probe_kit.metrics.coco import ground_truth_dict

    samples = build_data_spec(data, sequences, split, min_visibility, stride).load()
    gt = ground_truth_dict(samples)
    write_json(out, gt)
    click.echo(f"wrote {len(gt['images'])} images, {len(gt['annotations'])} annotations to {out}")
