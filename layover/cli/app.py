"""The Typer app every verb registers on, and what verbs share: the global options, how a
failure is said and how the process exits."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer

from layover import version


class _App(typer.Typer):
    """The Typer app, with the CLI's contract for errors nobody planned for: one line on
    stderr and exit 1, the traceback only with --debug (never Typer's rich traceback)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the last line of defence: say it in one line
            if OPTIONS.debug:
                traceback.print_exception(e, file=sys.stderr)
            typer.echo(
                f"layover: error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
                "(a bug: run again with --debug for the traceback and report it)",
                err=True,
            )
            sys.exit(1)


app = _App(
    add_completion=False,
    no_args_is_help=True,
    # Help text is plain text: rich markup would swallow "[default: ...]" and "[...]" in it.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
    help="Package a release's images into a verified Docker registry storage tarball.",
)


@dataclass
class Options:
    """The global options, as the callback below set them."""

    debug: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, 1 verbose


OPTIONS = Options()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"layover {version()}")
        raise typer.Exit()


@app.callback()
def _global_options(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="LAYOVER_DEBUG", help="Show tracebacks and Prefect's own log lines on stderr."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only errors and the result.")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Print every image and stage as it finishes.")
    ] = False,
) -> None:
    """Package a release's images into a verified Docker registry storage tarball."""
    OPTIONS.debug = debug
    OPTIONS.verbosity = -1 if quiet else 1 if verbose else 0


def fail(err: BaseException, *, also: Sequence[str] = ()) -> NoReturn:
    """Say what went wrong on stderr and exit with the error's code (layover/errors.py).

    One line; a bad list adds one line per bad line, a failed stage one per failed image;
    where the run wrote the long diagnostics, if it did. The traceback only with --debug."""
    if OPTIONS.debug:
        traceback.print_exception(err, file=sys.stderr)
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    rest = text.splitlines()[1:51]
    typer.echo(f"layover: error: {first}", err=True)
    for line in rest:
        typer.echo(f"  {line}", err=True)
    log_file = getattr(err, "log_file", None)
    if log_file:
        typer.echo(f"  details: {log_file}", err=True)
    for line in also:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(getattr(err, "exit_code", 1))


def quiet_prefect_defaults() -> None:
    """Offline-friendly Prefect defaults, set before prefect is imported (docs/design.md §5).

    The terminal belongs to Layover's own progress lines: Prefect's console handler says only
    what is critical, unless --debug (its log still reaches the Prefect server in full)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "DEBUG" if OPTIONS.debug else "CRITICAL")


def exit_fast(code: int) -> NoReturn:
    """Exit the ordinary way, but tell the collector the heap is done with first.

    Prefect's import graph is hundreds of thousands of objects, and the interpreter's last
    collections walk them all: `gc.freeze()` moves them out of the collector's sight. Measured
    with a one-task flow against a standing server, 5 runs: exit 1.43-1.62 s -> 1.19-1.30 s.
    Prefect's own shutdown (draining logs and events, stopping an embedded server) still runs."""
    import gc as collector

    collector.freeze()
    raise typer.Exit(code)
