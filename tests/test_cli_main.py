"""The CLI's shared behaviour: help, version, one-line errors and exit codes."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from metriclearn import __version__
from metriclearn.cli import cli, format_error


def test_help_and_version() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("train", "embed", "evaluate", "index", "classify", "second-opinion", "report"):
        assert name in result.output
    assert __version__ in runner.invoke(cli, ["--version"]).output


def test_unknown_command_is_usage_error() -> None:
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2


def test_errors_become_one_line_and_debug_reraises() -> None:
    @cli.command("_explode", hidden=True)
    def explode() -> None:
        raise ValueError("queries.npy: has dimension 3,\nexpected 4")

    try:
        result = CliRunner().invoke(cli, ["_explode"])
        assert result.exit_code == 1
        assert result.output.strip() == "Error: queries.npy: has dimension 3, expected 4"
        debug = CliRunner().invoke(cli, ["--debug", "_explode"])
        assert isinstance(debug.exception, ValueError)
    finally:
        cli.commands.pop("_explode")


def test_format_error_names_missing_file() -> None:
    assert format_error(FileNotFoundError(2, "No such file or directory", "x.npz")) == (
        "x.npz: No such file or directory"
    )
    assert format_error(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"
    assert format_error(ValueError("")) == "ValueError"


def test_click_errors_pass_through_unwrapped() -> None:
    @cli.command("_usage", hidden=True)
    def usage() -> None:
        raise click.UsageError("give --model DIR --data PATH")

    try:
        result = CliRunner().invoke(cli, ["_usage"])
        assert result.exit_code == 2 and result.output.strip().endswith("Error: give --model DIR --data PATH")
    finally:
        cli.commands.pop("_usage")


@pytest.mark.parametrize("argv", [["--help"]])
def test_main_entry_point_exits_zero(argv: list[str]) -> None:
    from metriclearn.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0


def test_package_reexports_the_public_api() -> None:
    import metriclearn
    from metriclearn.classify import CacheClassifier
    from metriclearn.indexes import EmbeddingIndex

    assert metriclearn.EmbeddingIndex is EmbeddingIndex and metriclearn.CacheClassifier is CacheClassifier
    assert all(getattr(metriclearn, name) is not None for name in metriclearn.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        metriclearn.nope  # noqa: B018
