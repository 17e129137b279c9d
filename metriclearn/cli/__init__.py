"""The ``metriclearn`` command line: one click group, one module per command group.

Every command exits 0 on success, 2 on usage errors (click's own) and 1 on any other failure, which
is printed as one line ``Error: ...``; ``metriclearn --debug COMMAND`` shows the traceback instead.
Python warnings are one ``warning: ...`` line each (with ``--debug``, Python's own form).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings
from typing import Any

import click

from metriclearn import __version__
from metriclearn._progress import set_quiet
from metriclearn.cli._inputs import quiet_option


class CommandFailed(click.ClickException):
    """A failure that is not a usage error: printed as one line, exit code 1."""

    exit_code = 1


def format_error(exc: BaseException) -> str:
    """One line describing ``exc``: OSErrors name the file, others give their message."""
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            reason += " (the disk is full: free some space or write elsewhere, then run the command again)"
        return f"{exc.filename}: {reason}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the message held


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """Show a Python warning as one ``warning: ...`` line on stderr (``--debug`` shows where it came from)."""
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


class MetricLearnGroup(click.Group):
    """A click group that turns any non-click exception into one clean line (unless ``--debug``).

    Python warnings raised while a command runs are printed as one ``warning: ...`` line each.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                if not ctx.params.get("debug"):
                    warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise CommandFailed(format_error(exc)) from exc


@click.group(cls=MetricLearnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metriclearn")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@quiet_option
def cli(debug: bool, quiet: bool) -> None:
    """metriclearn: learn embeddings where same-class points are neighbours, then use them."""
    set_quiet(quiet)
    if "WORLD_SIZE" in os.environ:  # started by torchrun: join the process group (docs/SCALING.md)
        from metriclearn.training.distributed import init_from_env

        init_from_env()


# (module, attribute) of every command; each module owns one command group of DESIGN.md.
_COMMANDS = (
    ("train", "train"),
    ("embed", "embed"),
    ("evaluate", "evaluate"),
    ("index", "index"),
    ("classify", "classify"),
    ("second_opinion", "second_opinion"),
    ("calibrate", "calibrate"),
    ("report", "report"),
)
for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"metriclearn.cli.{_module}"), _attr))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``metriclearn = metriclearn.cli:main``)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="metriclearn")
