"""``metriclearn index build|query``: build a FAISS index directory from embeddings and search it.

Unlike the Python API (which pads with id −1), the CLI treats k larger than the index as an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._checks import check_positive_int
from metriclearn._atomic import write_text
from metriclearn.indexes._factory import KINDS
from metriclearn.indexes._gpu import DEVICES
from metriclearn.indexes.exact import METRICS


@click.group()
def index() -> None:
    """Build and query FAISS indexes of embeddings."""


@index.command("build")
@click.option("--embeddings", type=click.Path(dir_okay=False, path_type=Path), help="Embeddings (n, d) .npy.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Labels (n,) .npy for --embeddings.")
@click.option("--model", type=click.Path(file_okay=False, path_type=Path), help="Trained run directory to embed with.")
@click.option("--data", type=str, help="Data to embed with --model: a .npz/.csv/.jsonl path or 'digits'.")
@click.option("--kind", default="flat", show_default=True, help=f"{', '.join(KINDS)} or a faiss factory string.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True)
@click.option("--nlist", type=int, help="Inverted lists for ivf/pq (default ≈ 4·√n).")
@click.option("--nprobe", type=int, help="Lists scanned per query for ivf/pq (default max(8, √nlist)).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the index into N shards with global ids (searched shard by shard, or rank r "
              "holds shard r under torchrun).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Index directory.")
def build(
    embeddings: Path | None,
    labels: Path | None,
    model: Path | None,
    data: str | None,
    kind: str,
    metric: str,
    nlist: int | None,
    nprobe: int | None,
    device: str,
    shards: int,
    out: Path,
) -> None:
    """Build an index from --embeddings [--labels] or from --model --data; write it to --out."""
    from metriclearn.indexes import EmbeddingIndex

    if (embeddings is None) == (model is None):
        raise click.UsageError("give either --embeddings FILE.npy or --model DIR --data PATH (not both)")
    if model is not None and (data is None or labels is not None):
        raise click.UsageError("--model needs --data PATH (labels come from the data; --labels is for --embeddings)")
    if embeddings is not None and data is not None:
        raise click.UsageError("--data goes with --model; with --embeddings give --labels FILE.npy")
    if embeddings is not None:
        from metriclearn.data import load_labels, load_matrix

        x = load_matrix(embeddings, name="embeddings")
        y = None if labels is None else load_labels(labels, n=x.shape[0])
    else:
        from metriclearn.training import embed_from_run  # lands with the trainer

        x, codes, classes = embed_from_run(model, data)  # under torchrun each rank embeds a strided shard
        y = np.asarray(classes)[codes]
    if not _is_main_process():  # under torchrun rank 0 builds and writes
        return
    if shards > 1:
        from metriclearn.indexes.sharded import ShardedIndex

        idx: Any = ShardedIndex.build(x, labels=y, num_shards=shards, metric=metric, kind=kind, device=device,
                                      nlist=nlist, nprobe=nprobe)
    else:
        idx = EmbeddingIndex(x.shape[1], metric=metric, kind=kind, device=device, nlist=nlist, nprobe=nprobe)
        idx.add(x, labels=y)
    idx.save(out)
    sharding = f", {shards} shards" if shards > 1 else ""
    click.echo(f"indexed {len(idx)} vectors of dimension {idx.dim} ({idx.factory}, {metric}{sharding}) -> {out}")


@index.command("query")
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index directory.")
@click.option("--queries", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Queries (q, d) .npy.")
@click.option("-k", "--k", "k", required=True, type=int, help="Neighbours per query (1 .. index size).")
@click.option("--json", "as_json", is_flag=True, help="Print ids / distances / labels as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON result here.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def query(index_dir: Path, queries: Path, k: int, as_json: bool, out: Path | None, device: str) -> None:
    """Print the k nearest neighbours of every row of --queries (a table, or JSON with --json)."""
    from metriclearn.data import load_matrix
    from metriclearn.indexes import EmbeddingIndex

    k = check_positive_int(k, "k")
    idx = EmbeddingIndex.load(index_dir, device=device)
    if k > len(idx):
        raise ValueError(f"k={k} is larger than the index {index_dir} ({len(idx)} vectors)")
    q = load_matrix(queries, name="queries")
    if q.shape[1] != idx.dim:
        raise ValueError(f"{queries} has dimension {q.shape[1]} but the index {index_dir} has dimension {idx.dim}")
    D, I = idx.search(q, k)  # collective on a sharded index under torchrun
    if not _is_main_process():
        return
    result = _result(idx, D, I)
    if out is not None:
        write_text(out, json.dumps(result) + "\n")
    if as_json:
        click.echo(json.dumps(result))
    elif out is not None:
        click.echo(f"wrote {I.shape[0]} x {k} neighbours -> {out}")
    else:
        click.echo(_table(result))


def _is_main_process() -> bool:
    """Rank 0 under torchrun (which writes and prints), or a plain single process."""
    from metriclearn.training.distributed import is_main_process

    return is_main_process()


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
