"""``metriclearn train``, ``embed`` and ``evaluate`` (placeholder until the trainer lands)."""

from __future__ import annotations

import click


def _pending(name: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'metriclearn {name}' is not available yet in this version")

    return command


train = _pending("train")
embed = _pending("embed")
evaluate = _pending("evaluate")
