"""``metriclearn index build|query`` (placeholder until the index lands)."""

from __future__ import annotations

import click


@click.group()
def index() -> None:
    """Build and query FAISS indexes of embeddings."""
