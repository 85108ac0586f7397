"""Root of the ``probe-kit`` command line. Commands stay thin: parse, build a config, call the library.

Heavy libraries (torch, transformers) are imported inside commands so ``--help`` is instant.

The error boundary: ``ProbeGroup.invoke`` turns every error a user can cause into one line on stderr
(``Error: ...``, exit 1; exit 2 for a bad command line), without a traceback. What counts as the user's:

- ``ValueError`` (with ``probe_kit.errors.UserError`` and the data layer's ``InputError``): bad files,
  fields, options and values; the message already names the culprit;
- ``OSError``: missing or unreadable files, read-only folders, a folder where a file belongs, a full
  disk, a file another process holds (printed as ``PATH: reason``);
- ``click.UsageError``: a bad command line, printed as one line that names the option.

Everything else (``TypeError``, ``KeyError``, ``AttributeError``, ``IndexError``, ``RuntimeError``,
``AssertionError``, ...) is a programming error and keeps its traceback. ``--debug`` (or
``PROBE_KIT_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import copy

import click

import probe_kit

# Commands that split their work over torchrun's processes themselves; under torchrun every other
# command runs on rank 0 while the other ranks wait (see probe_kit/distributed.py).
DISTRIBUTED_COMMANDS = ("cache", "evaluate", "evaluate-exits", "train-exits", "reference", "run", "demo")


class ProbeGroup(click.Group):
    """The error boundary (see the module docstring): user errors below it become one line on stderr;
    opens the process group when launched by torchrun."""

    def invoke(self, ctx: click.Context):
        from probe_kit import distributed

        try:
            with distributed.session():
                return super().invoke(ctx)
        except (ValueError, OSError, click.UsageError) as err:
            if _debug(ctx) or isinstance(err, click.exceptions.NoArgsIsHelpError):
                raise
            raise one_line(err) from err

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:  # the root's own options (``probe-kit --bogus``)
            if _debug(None) or isinstance(err, click.exceptions.NoArgsIsHelpError):
                raise
            raise one_line(err) from err

    def resolve_command(self, ctx: click.Context, args: list[str]):
        from probe_kit import distributed

        name, command, rest = super().resolve_command(ctx, args)
        if command is None or name in DISTRIBUTED_COMMANDS or not distributed.launched():
            return name, command, rest
        on_rank_zero = copy.copy(command)
        on_rank_zero.invoke = lambda sub_ctx: distributed.on_rank_zero(lambda: command.invoke(sub_ctx))
        return name, on_rank_zero, rest


def _debug(ctx: click.Context | None) -> bool:
    import os

    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    return os.environ.get("PROBE_KIT_DEBUG", "") not in ("", "0")


def one_line(err: BaseException) -> click.ClickException:
    """The user's error as one line: ``PATH: reason`` for file-system errors, the message otherwise."""
    if isinstance(err, click.UsageError):
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        text, code = err.format_message() + where, err.exit_code
    elif isinstance(err, OSError) and err.strerror and err.filename is not None:
        text, code = f"{err.filename}: {err.strerror}", 1
    else:
        text, code = str(err) or type(err).__name__, 1
    line = click.ClickException(" ".join(part.strip() for part in text.splitlines() if part.strip()))
    line.exit_code = code
    return line


@click.group(cls=ProbeGroup)
@click.version_option(probe_kit.__version__, prog_name="probe-kit")
@click.option("--debug", is_flag=True, help="Show the Python traceback of every error (also PROBE_KIT_DEBUG=1).")
def cli(debug: bool) -> None:
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
