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
import signal
from pathlib import Path

import click

import probe_kit

# Commands that split their work over torchrun's processes themselves; under torchrun every other
# command runs on rank 0 while the other ranks wait (see probe_kit/distributed.py).
DISTRIBUTED_COMMANDS = ("cache", "evaluate", "evaluate-exits", "train-exits", "reference", "run", "demo")


class ProbeGroup(click.Group):
    """The error boundary (see the module docstring): user errors below it become one line on stderr;
    opens the process group when launched by torchrun."""

    def invoke(self, ctx: click.Context):
        from probe_kit import console

        console.set_quiet(bool(ctx.params.get("quiet")))
        try:
            with console.log_to(ctx.params.get("log_file")):
                try:
                    return self._invoke(ctx)
                except click.ClickException as err:  # click prints it after this returns: log it here
                    console.log_line(f"Error: {err.format_message()}")
                    raise
        except OSError as err:  # the log file itself (the command's own errors are one line already)
            raise one_line(err) from err

    def _invoke(self, ctx: click.Context):
        from probe_kit import distributed
        from probe_kit.io import forget_stops, held_outputs, pending_stop

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)} if _main_thread() else {}
        try:
            with distributed.session():
                return super().invoke(ctx)
        except Stopped as stop:
            raise stop.one_line() from None
        except Exception as err:
            stop = _stop_behind(err)  # a signal that landed inside an import or a C call arrives wrapped
            if stop is None and pending_stop() is not None:  # ... or replaced by the C call's own error
                stop = Stopped(pending_stop(), held_outputs())
            if stop is not None:
                raise stop.one_line() from None
            if not isinstance(err, (ValueError, OSError, click.UsageError)):
                raise
            if _debug(ctx) or isinstance(err, click.exceptions.NoArgsIsHelpError):
                raise
            raise one_line(err) from err
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            forget_stops()  # a stop this command handled is not redelivered to the next one (tests, the API)

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


class Stopped(KeyboardInterrupt):
    """SIGTERM or Ctrl-C, raised where the program was, so every ``finally`` runs (locks, temporary files, the
    outputs ``guarded`` removes); ``one_line`` then says what was being written, and the exit code is 128 + signal."""

    def __init__(self, signum: int, writing: list) -> None:
        super().__init__(signum)
        self.signum, self.writing = signum, writing

    def one_line(self) -> click.ClickException:
        name = "SIGTERM" if self.signum == signal.SIGTERM else "Ctrl-C"
        what = f" while writing {', '.join(map(str, self.writing))}" if self.writing else ""
        line = click.ClickException(
            f"stopped by {name}{what}; an output it was making was removed (one it was replacing was put back), "
            "except a cache, study or recipe folder, which is kept as far as it got: rerun the same command to "
            "resume it"
        )
        line.exit_code = 128 + self.signum
        return line


def _stop_behind(err: BaseException) -> Stopped | None:
    """The ``Stopped`` an exception was raised from or during, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Stopped):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _stop(signum: int, _frame) -> None:
    from probe_kit.io import held_outputs, note_stop

    note_stop(signum)  # redelivered by long loops if this exception is swallowed (raised in a finalizer)
    raise Stopped(signum, held_outputs())


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage lines; results and errors still print.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also append everything printed to this file (progress bars as their last frame).",
)
def cli(debug: bool, quiet: bool, log_file: Path | None) -> None:
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
