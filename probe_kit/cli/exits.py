"""``probe-kit train-exits`` and ``probe-kit evaluate-exits``."""

from __future__ import annotations

from pathlib import Path

import click

from probe_kit.cli.options import Device, FloatList, build_data_spec, check_flags, data_options
from probe_kit.cli.outputs import EXITS, EXITS_EVALUATION, dir_out, guarded
from probe_kit.heads.options import default


@click.command("train-exits")
@click.option(
    "--cache", "cache_path", type=click.Path(path_type=Path), required=True, help="Feature cache (.h5) to train on."
)
@click.option("--layers", required=True, help="Exit layers, e.g. 4,8,12 (the last layer is always added).")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for the exit heads (config.json + weights)."
)
@click.option("--epochs", type=int, default=default("epochs"), show_default=True)
@click.option("--lr", type=float, default=default("lr"), show_default=True)
@click.option(
    "--set-weight",
    type=float,
    default=default("set_weight"),
    show_default=True,
    help="Weight of the set loss vs ground truth.",
)
@click.option(
    "--distill-weight",
    type=float,
    default=default("distill_weight"),
    show_default=True,
    help="Weight of distillation towards the final layer.",
)
@click.option(
    "--val-sequences",
    default=None,
    help="Validation sequences, named as --sequences names them (13, MOT17-13 or MOT17-13-FRCNN); "
    f"default: the last {default('val_fraction'):.0%}.",
)
@click.option(
    "--split-gap",
    type=float,
    default=default("split_gap"),
    show_default=True,
    help="Share of a sequence's frames left out between contiguous train/early-stopping/scored blocks "
    "(at least one frame: adjacent frames are near-copies).",
)
@click.option(
    "--finetune-blocks",
    type=int,
    default=default("finetune_blocks"),
    show_default=True,
    help="Then fine-tune the k blocks before each exit with all heads, on live images (GPU path).",
)
@click.option(
    "--regime",
    type=click.Choice(["frozen", "finetune", "joint"]),
    default=None,
    help="frozen: heads on cached tokens (the default); finetune: then the --finetune-blocks K blocks before each "
    "exit; joint: then every block up to the last exit with every exit's loss (weighted by depth, the final "
    "layer's included), keeping the epoch with the best holdout AP50. The live stages run --finetune-epochs.",
)
@click.option(
    "--det-tokens",
    type=int,
    default=None,
    help="Exits before the last read only the k detection tokens the final layer matches to ground truth most "
    "often on the training images (a smaller output space; det heads); default: all of them.",
)
@click.option(
    "--self-distill-epochs",
    type=int,
    default=default("self_distill_epochs"),
    show_default=True,
    help="With --regime joint: then train the exit heads alone on the jointly trained backbone (frozen), distilled "
    "towards its own final layer, for this many epochs (LGViT's second stage).",
)
@click.option("--finetune-epochs", type=int, default=default("finetune_epochs"), show_default=True)
@click.option("--finetune-lr", type=float, default=default("finetune_lr"), show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--device", type=Device(), default="cpu", show_default=True, help="Where the model runs (block fine-tuning)."
)
@click.option(
    "--head",
    default="det",
    show_default=True,
    help="An exit-head type: det (heads on det tokens, from the pretrained head), dense (per-patch objectness + "
    "box on patch tokens, NMS; the last layer keeps the model's head; needs patch tokens) or a registered plug-in.",
)
def train_exits(
    cache_path,
    layers,
    out,
    epochs,
    lr,
    set_weight,
    distill_weight,
    val_sequences,
    split_gap,
    finetune_blocks,
    regime,
    det_tokens,
    self_distill_epochs,
    finetune_epochs,
    finetune_lr,
    seed,
    device,
    head,
) -> None:
    """Train exit heads on cached tokens: det heads (from the pretrained head) or dense heads on patch tokens."""
    from probe_kit import api, distributed
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.registry import head_type
    from probe_kit.models.layers import resolve_layers

    try:
        head_type(head)
    except ValueError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1], param_hint="--head") from None
    with FeatureCache(cache_path) as cache:
        resolve_layers(layers, cache.depth)  # a bad selection fails before any work
        num_det = cache.layout.num_det
    if det_tokens is not None and head != "det":
        raise click.BadParameter(f"applies to det heads, not {head!r}", param_hint="--det-tokens")
    if det_tokens is not None and not 1 <= det_tokens <= num_det:
        raise click.BadParameter(
            f"{det_tokens}: the model has {num_det} detection tokens; expected 1 to {num_det}",
            param_hint="--det-tokens",
        )
    training = dict(
        epochs=epochs,
        lr=lr,
        set_weight=set_weight,
        distill_weight=distill_weight,
        val_sequences=tuple(v.strip() for v in val_sequences.split(",")) if val_sequences else (),
        finetune_blocks=finetune_blocks,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        split_gap=split_gap,
        regime=regime or ("finetune" if finetune_blocks > 0 else "frozen"),
        det_tokens=det_tokens,
        self_distill_epochs=self_distill_epochs,
    )
    check_flags(ExitTraining, training)  # before any work
    # Under torchrun heads train on the cache on rank 0 alone; with a live stage (finetune, joint) every rank
    # trains (the cheap head stage identically, the blocks data-parallel) and rank 0 saves.
    train = lambda: api.train_exits(cache_path, layers, out, seed, head=head, device=device, **training)  # noqa: E731
    with guarded(dir_out(out, EXITS)):  # checked before any training; a failed run leaves no folder it created
        path = train() if training["regime"] != "frozen" else distributed.on_rank_zero(train)
    if distributed.is_main():
        click.echo(f"exit heads -> {path}")


@click.command("evaluate-exits")
@click.option(
    "--exits",
    "exits_dirs",
    type=click.Path(path_type=Path),
    required=True,
    multiple=True,
    help="Exit-heads folder (from train-exits); repeat to compare designs.",
)
@data_options
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Output folder (result.json, detections/*.json)."
)
@click.option(
    "--policy",
    default="confidence",
    show_default=True,
    help="confidence, patience, learned, oracle (a bound) or a registered policy plug-in.",
)
@click.option(
    "--thresholds",
    type=FloatList(0.0, 1.0),
    default=None,
    help="Policy thresholds to sweep, comma-separated, in [0, 1].",
)
@click.option(
    "--policies",
    default=None,
    help="Compare designs: registered policies (built in: confidence,patience,learned,oracle) over every --exits "
    "folder on the same "
    "held-out images -> result.json `designs`, Pareto front, latency check (oracle: a bound).",
)
@click.option(
    "--max-ap50-loss",
    type=float,
    default=None,
    help="With --policies: each policy's cheapest setting within this AP50 loss is timed [default: 0.01].",
)
@click.option(
    "--baseline-resolutions",
    callback=lambda _ctx, _param, text: None if text is None else _fractions(text),
    default=None,
    help="With --policies: also score and time the reference folder's model at these fractions of its input size "
    "(e.g. 0.75,0.5): the lower-resolution baseline an exit design must beat at equal measured latency.",
)
@click.option(
    "--baseline-model",
    "baseline_models",
    multiple=True,
    help="With --policies: also score and time this YOLOS checkpoint (hub id, folder, or shallow-reference) on the "
    "same held-out images, e.g. a smaller model trained on its own; repeat for several.",
)
@click.option("--device", type=Device(), default="cpu", show_default=True)
@click.option(
    "--timing-images",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Held-out images timed per setting.",
)
@click.option(
    "--timing-repeats",
    type=click.IntRange(min=3),
    default=11,
    show_default=True,
    help="Interleaved timing rounds at least (3 or more), after one warm-up round; up to 3x as many are run while a "
    "speed-up's 95% interval is wider than 10% of it (the rounds run and why they stopped are recorded).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads while timing (recorded)."
)
def evaluate_exits(
    exits_dirs,
    data,
    sequences,
    split,
    min_visibility,
    stride,
    detector,
    out,
    policy,
    thresholds,
    policies,
    max_ap50_loss,
    baseline_resolutions,
    baseline_models,
    device,
    timing_images,
    timing_repeats,
    threads,
) -> None:
    """Held-out images only: static exits, the policy sweep (AP vs GFLOPs) from one pass, measured latency."""
    from probe_kit import api, distributed
    from probe_kit.heads.evaluate import DEFAULT_THRESHOLDS, Timing, summary_lines
    from probe_kit.io import write_json

    with guarded(dir_out(out, EXITS_EVALUATION)):  # checked before any work; a failed run leaves no folder it created
        data_spec = build_data_spec(data, sequences, split, min_visibility, stride, detector)
        cuts = thresholds or DEFAULT_THRESHOLDS  # finite numbers, or refused naming --thresholds
        timing = Timing(images=timing_images, repeats=timing_repeats, threads=threads)
        if policies is not None or len(exits_dirs) > 1:  # the design comparison: rank 0 alone (it times side by side)
            from probe_kit.heads.designs import default_thresholds, design_lines, parse_policies

            grids = default_thresholds()
            try:
                chosen = parse_policies(",".join(grids) if policies is None else policies)
            except ValueError as err:
                raise click.BadParameter(str(err).split(": ", 1)[-1], param_hint="--policies") from None
            result = distributed.on_rank_zero(
                lambda: api.compare_designs(
                    exits_dirs,
                    data_spec,
                    policies=chosen,
                    thresholds={p: cuts for p in chosen} if thresholds else grids,
                    max_ap50_loss=0.01 if max_ap50_loss is None else max_ap50_loss,
                    device=device,
                    timing=timing,
                    baseline_resolutions=baseline_resolutions or (),
                    baseline_models=baseline_models,
                )
            )
            lines = design_lines(result)
        else:
            for given, name in ((max_ap50_loss, "--max-ap50-loss"), (baseline_resolutions, "--baseline-resolutions")):
                if given is not None:
                    raise click.UsageError(f"{name} applies to the design comparison: add --policies")
            if baseline_models:
                raise click.UsageError("--baseline-model applies to the design comparison: add --policies")
            result = api.evaluate_exits(
                exits_dirs[0],
                data_spec,
                thresholds=cuts,
                policy_kind=policy,
                device=device,
                timing=timing,
                detections_dir=Path(out) / "detections",
            )
            lines = summary_lines(result)
        if not distributed.is_main():  # under torchrun every rank holds rank 0's result; rank 0 writes it
            return
        path = write_json(Path(out) / "result.json", result)
    for line in lines:
        click.echo(line)
    click.echo(f"-> {path}")


def _fractions(text: str) -> tuple[float, ...]:
    from probe_kit.heads.baselines import parse_fractions

    try:
        return parse_fractions(text)
    except ValueError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1], param_hint="--baseline-resolutions") from None
