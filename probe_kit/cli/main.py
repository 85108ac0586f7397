"""Root of the ``probe-kit`` command line. Commands stay thin: parse, build a config, call the library.

Heavy libraries (torch, transformers) are imported inside commands so ``--help`` is instant.
"""

from __future__ import annotations

import copy

import click

import probe_kit


# Commands that split their work over torchrun's processes themselves; under torchrun every other
# command runs on rank 0 while the other ranks wait (see probe_kit/distributed.py).
DISTRIBUTED_COMMANDS = ("cache", "evaluate", "evaluate-exits", "train-exits", "reference", "run", "demo")


class ProbeGroup(click.Group):
    """Turns library ``ValueError``s raised anywhere below it into one-line CLI errors (exit 1);
    opens the process group when launched by torchrun."""

    def invoke(self, ctx: click.Context):
        from probe_kit import distributed

        try:
            with distributed.session():
                return super().invoke(ctx)
        except (ValueError, FileNotFoundError) as err:
            raise click.ClickException(str(err).splitlines()[0] if str(err) else repr(err)) from err

    def resolve_command(self, ctx: click.Context, args: list[str]):
        from probe_kit import distributed

        name, command, rest = super().resolve_command(ctx, args)
        if command is None or name in DISTRIBUTED_COMMANDS or not distributed.launched():
            return name, command, rest
        on_rank_zero = copy.copy(command)
        on_rank_zero.invoke = lambda sub_ctx: distributed.on_rank_zero(lambda: command.invoke(sub_ctx))
        return name, on_rank_zero, rest


@click.group(cls=ProbeGroup)
@click.version_option(probe_kit.__version__, prog_name="probe-kit")
def cli() -> None:
    """Can the intermediate layers of a YOLOS detector support detection, and where should exits go?"""


def _register() -> None:
    from probe_kit.cli import analyze, cache, data, decide, evaluate, exits, reference, report, run

    for module in (data, cache, evaluate, analyze, decide, report, reference):
        cli.add_command(module.command)
    cli.add_command(exits.train_exits)
    cli.add_command(exits.evaluate_exits)
    cli.add_command(run.run)
    cli.add_command(run.demo)


_register()
