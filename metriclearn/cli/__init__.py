"""The ``metriclearn`` command line: one click group, one module per command group.

Every command exits 0 on success, 2 on usage errors (click's own) and 1 on any other failure, which
is printed as one line ``Error: ...``; ``metriclearn --debug COMMAND`` shows the traceback instead.
Python warnings are one ``warning: ...`` line each (with ``--debug``, Python's own form).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
import warnings
from typing import Any

import click

from metriclearn import __version__
from metriclearn._progress import set_quiet
from metriclearn.cli._inputs import examples, quiet_option


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


# Every command, in workflow order: (name, module under metriclearn.cli, attribute, one-line help). A command's
# module is imported only when that command runs or shows its help, so ``metriclearn --help`` and
# ``metriclearn COMMAND --help`` import no torch, faiss or scikit-learn (benchmarks/bench_startup.py).
COMMANDS = (
    ("train", "train", "train", "Train an embedding model and write a run directory."),
    ("embed", "embed", "embed", "Embed data with a trained run into a .npy file."),
    ("evaluate", "evaluate", "evaluate", "Retrieval and separation metrics of a trained run."),
    ("index", "index", "index", "Build, query and describe FAISS indexes of embeddings."),
    ("calibrate", "calibrate", "calibrate", "Calibrate an index's classifier on held-out rows."),
    ("classify", "classify", "classify", "Classify queries with the labelled vectors of an index."),
    ("second-opinion", "second_opinion", "second_opinion", "Blend a model's probabilities with a cache's."),
    ("report", "report", "report", "t-SNE / UMAP pictures and class-separation metrics."),
)


def _torchrun_group() -> contextlib.AbstractContextManager[Any]:
    """Started by torchrun: the command runs in the process group, which every rank leaves together
    (:func:`~metriclearn._distributed.process_group`; docs/SCALING.md). Else nothing (no torch import)."""
    if "WORLD_SIZE" not in os.environ:
        return contextlib.nullcontext()
    from metriclearn._distributed import process_group

    return process_group()


class MetricLearnGroup(click.Group):
    """A click group that turns any non-click exception into one clean line (unless ``--debug``).

    Python warnings raised while a command runs are printed as one ``warning: ...`` line each. Commands are
    loaded lazily from :data:`COMMANDS` and listed in workflow order.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, *_ in COMMANDS] + sorted(self.commands)  # then any added with @cli.command

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr, _ in COMMANDS:
            if name == cmd_name:
                return getattr(importlib.import_module(f"metriclearn.cli.{module}"), attr)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`, without importing any command's module."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, _, _, short in COMMANDS])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings(), _torchrun_group():
                if not ctx.params.get("debug"):
                    warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise CommandFailed(format_error(exc)) from exc


@click.group(cls=MetricLearnGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=examples(
    "metriclearn train --data digits --out runs/digits",
    "metriclearn index build --model runs/digits --data digits --out idx",
    "metriclearn classify --index idx --model runs/digits --data digits --method knn --out pred.csv",
))
@click.version_option(__version__, prog_name="metriclearn")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@quiet_option
def cli(debug: bool, quiet: bool) -> None:
    """metriclearn: learn embeddings where same-class points are neighbours, then use them."""
    set_quiet(quiet)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``metriclearn = metriclearn.cli:main``)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="metriclearn")
