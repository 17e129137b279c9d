"""``metriclearn index build|query``: build a FAISS index directory from embeddings and search it.

Unlike the Python API (which clamps k to the index size), the CLI treats k larger than the index as an error.
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
from metriclearn._device import DEVICES
from metriclearn.cli._inputs import (
    check_dim,
    check_distinct_files,
    check_k,
    check_same_model,
    check_source,
    csv_columns,
    examples,
    parse_columns,
    quiet_option,
    read_vectors,
    vector_options,
)
from metriclearn.indexes._factory import KINDS
from metriclearn.indexes.exact import METRICS


@click.group()
def index() -> None:
    """Build and query FAISS indexes of embeddings."""


@index.command("build", epilog=examples(
    'metriclearn index build --embeddings emb.npy --labels labels.npy --out idx',
    'metriclearn index build --model runs/digits --data digits --kind hnsw --target-recall 0.95 --out idx',
))
@vector_options("--embeddings", "Embeddings (n, d) .npy.", labels_flag="--labels")
@click.option("--kind", default="flat", show_default=True, help=f"{', '.join(KINDS)} or a faiss factory string.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True)
@click.option("--nlist", type=int, help="Inverted lists for ivf/pq (default ≈ 4·√n).")
@click.option("--nprobe", type=int, help="Lists scanned per query for ivf/pq (default max(8, √nlist)).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the index into N shards with global ids (searched shard by shard, or rank r "
              "holds shard r under torchrun).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Index directory: new, empty, or an index this tool wrote (with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the index already in --out.")
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    help="Tune the index to this recall@k against exact search (cheapest nprobe/efSearch, a few nlist/M).",
)
@click.option("--k", "tune_k", type=click.IntRange(min=1), default=10, show_default=True,
              help="k of recall@k for --target-recall.")
@click.option(
    "--tune-queries",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Held-out queries (q, d) .npy for --target-recall (default: a sample of the data, left out of the truth).",
)
@click.option("--id-column", metavar="NAME",
              help="With --model --data FILE.csv: integer ids from this column go into the index (not a feature).")
@click.option("--keep-columns", metavar="A,B", callback=parse_columns,
              help="With --model --data FILE.csv: these columns are stored with the vectors as metadata (shown by "
                   "index query), not used as features.")
@quiet_option
def build(
    matrix: Path | None,
    labels: Path | None,
    model: Path | None,
    data: str | None,
    label_column: str,
    id_column: str | None,
    keep_columns: tuple[str, ...],
    kind: str,
    metric: str,
    nlist: int | None,
    nprobe: int | None,
    device: str,
    shards: int,
    out: Path,
    overwrite: bool,
    quiet: bool,
    target_recall: float | None,
    tune_k: int,
    tune_queries: Path | None,
) -> None:
    """Build an index from --embeddings [--labels] or from --model --data; write it to --out.

    With --model, the data's labels (if any) go into the index, whatever their classes, and the index
    records the model's fingerprint so that queries embedded by another model are refused.
    """
    from metriclearn._outdir import check_output_dir, claim_output_dir
    from metriclearn.data import csv_extras, load_matrix
    from metriclearn.indexes import EmbeddingIndex

    if target_recall is None and tune_queries is not None:
        raise click.UsageError("--tune-queries goes with --target-recall R")
    if target_recall is not None and shards > 1:
        raise click.UsageError("--target-recall tunes one index; build it without --shards")
    check_source(matrix, model, data, "--embeddings", labels, "--labels")
    columns = csv_columns(label_column, id_column, keep_columns)
    if (id_column or keep_columns) and (data is None or not str(data).lower().endswith(".csv")):
        raise click.UsageError("--id-column and --keep-columns read a .csv given as --model DIR --data FILE.csv")
    if (id_column or keep_columns) and shards > 1:
        raise click.UsageError("--id-column and --keep-columns build one index; build it without --shards")
    check_output_dir(out, "index", overwrite=overwrite)  # before embedding or tuning
    queries = None if tune_queries is None else load_matrix(tune_queries, name="tune queries")
    ids, metadata = csv_extras(data, columns) if (id_column or keep_columns) and data is not None else (None, None)

    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="embeddings", labels=labels,
                           labels_flag="--labels", device=device, columns=columns)  # torchrun: a shard a rank
    if not _is_main_process():  # under torchrun rank 0 builds and writes
        return
    if shards > 1:
        from metriclearn.indexes.sharded import ShardedIndex

        idx: Any = ShardedIndex.build(vectors.x, labels=vectors.labels, num_shards=shards, metric=metric, kind=kind,
                                      device=device, nlist=nlist, nprobe=nprobe)
    else:
        idx = EmbeddingIndex(vectors.x.shape[1], metric=metric, kind=kind, device=device, nlist=nlist, nprobe=nprobe)
        idx.add(vectors.x, labels=vectors.labels, ids=ids, metadata=metadata)
    if target_recall is not None:
        _tune(idx, vectors.x, target_recall, tune_k, queries, tune_queries)
    if vectors.fingerprint is not None:
        idx.attrs["model_fingerprint"] = vectors.fingerprint
    with claim_output_dir(out, "index", overwrite=overwrite):
        idx.save(out)
    sharding = f", {shards} shards" if shards > 1 else ""
    click.echo(f"indexed {len(idx)} vectors of dimension {idx.dim} ({idx.factory}, {metric}{sharding}) -> {out}")


@index.command("query", epilog=examples(
    'metriclearn index query --index idx --embeddings queries.npy -k 5',
    'metriclearn index query --index idx --model runs/digits --data digits -k 10 --json',
))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index directory.")
@vector_options("--embeddings", "Query embeddings (q, d) .npy (carries no model fingerprint: not checked against "
                "the index).", aliases=("--queries",))
@click.option("-k", "--k", "k", required=True, type=int, help="Neighbours per query (1 .. index size).")
@click.option("--json", "as_json", is_flag=True, help="Print ids / distances / labels as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON result here.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@quiet_option
def query(index_dir: Path, matrix: Path | None, model: Path | None, data: str | None, k: int, as_json: bool,
          out: Path | None, device: str, quiet: bool) -> None:
    """Print the k nearest neighbours of every query (a table, or JSON with --json).

    Queries come from --embeddings FILE.npy (or --queries, its older name), or --model DIR --data PATH
    embeds them on the fly; an index built by another model (index build --model) is then refused.
    """
    from metriclearn.indexes import load_index

    check_source(matrix, model, data, "--embeddings")
    check_distinct_files([("--out", out)], [("--embeddings", matrix), ("--data", data)])
    idx = load_index(index_dir, device=device)
    k = check_k(k, idx, index_dir)
    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="queries", device=device)
    check_same_model(idx, index_dir, vectors)
    D, I = idx.search(check_dim(vectors, idx, index_dir), k)  # collective on a sharded index under torchrun
    if not _is_main_process():  # rank 0 prints and writes
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
    from metriclearn._distributed import is_main_process

    return is_main_process()


def _tune(idx: Any, x: np.ndarray, target_recall: float, k: int, queries: np.ndarray | None,
          queries_path: Path | None) -> None:
    """``EmbeddingIndex.tune`` for ``index build --target-recall``: its notes and result as lines."""
    import warnings

    from metriclearn.indexes.tuning import TuningWarning

    if queries is not None and queries.shape[1] != idx.dim:
        raise ValueError(f"{queries_path} has dimension {queries.shape[1]} but the embeddings have dimension {idx.dim}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)  # the notes are printed below
        report = idx.tune(target_recall, k=k, queries=queries, vectors=x)
    for note in report["notes"]:
        click.echo(f"note: {note}")
    params = ", ".join(f"{key}={value}" for key, value in report["params"].items()) or "exact"
    click.echo(
        f"tuned: recall@{k} {report['recall_at_k']:.3f} ± {report['recall_se']:.3f} (target {target_recall:g}) on "
        f"{report['held_out_queries']} held-out queries with {params}; "
        f"{report['speed_vs_flat']:.2f}x the speed of exact search"
    )


@index.command("info", epilog=examples(
    'metriclearn index info --index idx',
    'metriclearn index info --index idx --json',
))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object.")
@quiet_option
def info(index_dir: Path, as_json: bool, quiet: bool) -> None:
    """What an index directory holds: kind, size, measured recall and speed, parameters, provenance."""
    from metriclearn.indexes import describe

    facts = describe(index_dir)
    click.echo(json.dumps(facts) if as_json else _info_text(facts))


def _se(tuning: dict[str, Any]) -> str:
    """`` ± SE`` of a tuning record's recall (records written before it was measured have none)."""
    return f" ± {tuning['recall_se']}" if tuning.get("recall_se") is not None else ""


def _info_text(facts: dict[str, Any]) -> str:
    """``index info`` as aligned ``name: value`` lines."""
    lines = [
        ("path", facts["path"]),
        ("format version", facts["format_version"]),
        ("kind", f"{facts['kind']} ({facts['factory']})"),
        ("metric", facts["metric"]),
        ("vectors", facts["size"]),
        ("dimension", facts["dim"]),
    ]
    if facts.get("shards") is not None:
        lines.append(("shards", facts["shards"]))
    lines += [
        ("labels", "yes" if facts["labels"] else "no"),
        ("metadata", "yes" if facts["metadata"] else "no"),
        ("parameters", _kind_params(facts["kind"], facts["params"]) or "none (exact search)"),
    ]
    if facts["params"].get("k_factor") is not None:
        lines.append(("re-ranking", f"exact distances over the top k·{facts['params']['k_factor']} candidates"))
    tuning = facts.get("tuning")
    if tuning:
        lines += [
            (f"recall@{tuning['k']}", f"{tuning['recall_at_k']}{_se(tuning)} (target {tuning['target_recall']}, "
             f"{'reached' if tuning['reached'] else 'NOT reached'}; {tuning['held_out_queries']} held-out queries)"),
            ("speed", f"{tuning['qps']:.0f} queries/s, {tuning['speed_vs_flat']}x exact search "
             f"({tuning['threads']} thread{'s' if tuning['threads'] != 1 else ''})"),
            ("tuned parameters", ", ".join(f"{k}={v}" for k, v in tuning["params"].items()) or "none (exact)"),
        ]
        lines += [("note", note) for note in tuning.get("notes", [])]
    else:
        lines.append(("recall", "not measured (build with --target-recall R)"))
    if facts.get("calibration") is not None:
        lines.append(("calibration", json.dumps(facts["calibration"])))
    if facts.get("model_fingerprint") is not None:
        lines.append(("model fingerprint", facts["model_fingerprint"]))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in lines)


# the parameters that mean something for each named kind (a faiss factory string shows all that are set)
_KIND_PARAMS = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "hnsw": ("hnsw_m", "ef_search", "ef_construction"),
    "pq": ("nlist", "nprobe", "pq_m", "pq_nbits", "k_factor"),
}


def _kind_params(kind: str, params: dict[str, Any]) -> str:
    """``name=value, ...`` of the parameters of ``kind`` only (``index info`` shows no HNSW settings for IVF)."""
    names = _KIND_PARAMS.get(kind, tuple(params))
    return ", ".join(f"{k}={params[k]}" for k in names if params.get(k) is not None)


def _result(idx: Any, D: np.ndarray, I: np.ndarray) -> dict[str, Any]:
    """The JSON-able query result; non-finite distances (missing neighbours) become null."""
    result: dict[str, Any] = {
        "metric": idx.metric,
        "score": "squared_l2_distance" if idx.metric == "l2" else "similarity",
        "k": int(I.shape[1]),
        "ids": I.tolist(),
        "distances": [[float(v) if math.isfinite(v) else None for v in row] for row in D.tolist()],
    }
    metadata = idx.metadata_for(I) if _has_metadata(idx) else None
    if metadata is not None:  # what --keep-columns stored: shown with every neighbour
        result["metadata"] = metadata
    if idx.labels is not None:
        labels = idx.labels_for(I).tolist()
        result["labels"] = [
            [lab if i >= 0 else None for lab, i in zip(row, ids, strict=True)]
            for row, ids in zip(labels, I, strict=True)
        ]
    return result


def _has_metadata(idx: Any) -> bool:
    """Whether the index stores metadata with its vectors (``index build --keep-columns``)."""
    if not hasattr(idx, "metadata_for"):  # a sharded index stores no metadata
        return False
    ids = idx.ids
    return len(ids) > 0 and idx.metadata_for(ids[:1])[0] is not None


def _table(result: dict[str, Any]) -> str:
    """A fixed-width table: one line per (query, rank)."""
    score = "distance" if result["score"] == "squared_l2_distance" else "similarity"
    header = ["query", "rank", "id", score] + (["label"] if "labels" in result else [])
    header += ["metadata"] if "metadata" in result else []
    rows = []
    for qi, (ids, dists) in enumerate(zip(result["ids"], result["distances"], strict=True)):
        for rank, (i, dist) in enumerate(zip(ids, dists, strict=True), start=1):
            row = [str(qi), str(rank), str(i), "-" if dist is None else f"{dist:.6g}"]
            if "labels" in result:
                label = result["labels"][qi][rank - 1]
                row.append("-" if label is None else str(label))
            if "metadata" in result:
                meta = result["metadata"][qi][rank - 1]
                row.append("-" if meta is None else json.dumps(meta, ensure_ascii=False))
            rows.append(row)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )
