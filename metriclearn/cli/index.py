"""``metriclearn index build|query``: build a FAISS index directory from embeddings and search it.

Unlike the Python API (which pads with id −1), the CLI treats k larger than the index as an error.
``index build --model DIR`` records the model's fingerprint (``attrs["model_fingerprint"]``), and ``index
query --model DIR --data PATH`` refuses an index built by another model. ``.npy`` embeddings and queries carry
no fingerprint, so they are not checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._atomic import write_text
from metriclearn.cli._inputs import (
    check_dim,
    check_k,
    check_same_model,
    check_source,
    quiet_option,
    read_vectors,
    vector_options,
)
from metriclearn.indexes import DEVICES, KINDS
from metriclearn.indexes.exact import METRICS


@click.group()
def index() -> None:
    """Build and query FAISS indexes of embeddings."""


@index.command("build")
@vector_options("--embeddings", "Embeddings (n, d) .npy.", labels_flag="--labels")
@click.option("--kind", default="flat", show_default=True, help=f"{', '.join(KINDS)} or a faiss factory string.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True)
@click.option("--nlist", type=int, help="Inverted lists for ivf/pq (default ≈ 4·√n).")
@click.option("--nprobe", type=int, help="Lists scanned per query for ivf/pq (default max(8, √nlist)).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Index directory: new, empty, or an index this tool wrote (with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the index already in --out.")
@quiet_option
def build(
    matrix: Path | None,
    labels: Path | None,
    model: Path | None,
    data: str | None,
    kind: str,
    metric: str,
    nlist: int | None,
    nprobe: int | None,
    device: str,
    out: Path,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Build an index from --embeddings [--labels] or from --model --data; write it to --out.

    With --model, the data's labels (if any) go into the index, whatever their classes, and the index
    records the model's fingerprint so that queries embedded by another model are refused.
    """
    from metriclearn._outdir import claim_output_dir
    from metriclearn.indexes import EmbeddingIndex

    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="embeddings", labels=labels,
                           labels_flag="--labels", device=device)
    idx = EmbeddingIndex(vectors.x.shape[1], metric=metric, kind=kind, device=device, nlist=nlist, nprobe=nprobe)
    idx.add(vectors.x, labels=vectors.labels)
    if vectors.fingerprint is not None:
        idx.attrs["model_fingerprint"] = vectors.fingerprint
    with claim_output_dir(out, "index", overwrite=overwrite, legacy=("index.json",)):
        idx.save(out)
    click.echo(f"indexed {len(idx)} vectors of dimension {idx.dim} ({idx.factory}, {metric}) -> {out}")


@index.command("query")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index directory.")
@vector_options("--queries", "Queries (q, d) .npy (carries no model fingerprint: not checked against the index).")
@click.option("-k", "--k", "k", required=True, type=int, help="Neighbours per query (1 .. index size).")
@click.option("--json", "as_json", is_flag=True, help="Print ids / distances / labels as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON result here.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@quiet_option
def query(index_dir: Path, matrix: Path | None, model: Path | None, data: str | None, k: int, as_json: bool,
          out: Path | None, device: str, quiet: bool) -> None:
    """Print the k nearest neighbours of every query (a table, or JSON with --json).

    Queries come from --queries FILE.npy, or --model DIR --data PATH embeds them on the fly; an index built
    by another model (index build --model) is then refused.
    """
    from metriclearn.indexes import EmbeddingIndex

    check_source(matrix, model, data, "--queries")
    idx = EmbeddingIndex.load(index_dir, device=device)
    k = check_k(k, idx, index_dir)
    vectors = read_vectors(matrix, model, data, matrix_flag="--queries", what="queries", device=device)
    check_same_model(idx, index_dir, vectors)
    D, I = idx.search(check_dim(vectors, idx, index_dir), k)
    result = _result(idx, D, I)
    if out is not None:
        write_text(out, json.dumps(result) + "\n")
    if as_json:
        click.echo(json.dumps(result))
    elif out is not None:
        click.echo(f"wrote {I.shape[0]} x {k} neighbours -> {out}")
    else:
        click.echo(_table(result))


def _result(idx: Any, D: np.ndarray, I: np.ndarray) -> dict[str, Any]:
    """The JSON-able query result; non-finite distances (missing neighbours) become null."""
    result: dict[str, Any] = {
        "metric": idx.metric,
        "score": "squared_l2_distance" if idx.metric == "l2" else "similarity",
        "k": int(I.shape[1]),
        "ids": I.tolist(),
        "distances": [[float(v) if math.isfinite(v) else None for v in row] for row in D.tolist()],
    }
    if idx.labels is not None:
        labels = idx.labels_for(I).tolist()
        result["labels"] = [
            [lab if i >= 0 else None for lab, i in zip(row, ids, strict=True)]
            for row, ids in zip(labels, I, strict=True)
        ]
    return result


def _table(result: dict[str, Any]) -> str:
    """A fixed-width table: one line per (query, rank)."""
    score = "distance" if result["score"] == "squared_l2_distance" else "similarity"
    header = ["query", "rank", "id", score] + (["label"] if "labels" in result else [])
    rows = []
    for qi, (ids, dists) in enumerate(zip(result["ids"], result["distances"], strict=True)):
        for rank, (i, dist) in enumerate(zip(ids, dists, strict=True), start=1):
            row = [str(qi), str(rank), str(i), "-" if dist is None else f"{dist:.6g}"]
            if "labels" in result:
                label = result["labels"][qi][rank - 1]
                row.append("-" if label is None else str(label))
            rows.append(row)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )
