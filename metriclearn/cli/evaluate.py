"""``metriclearn evaluate``: retrieval and separation metrics of a trained run on any labelled data.

A pair file (``anchor``/``positive`` lines) is measured on its own pairs: Recall@1/@10, MRR@10 and NDCG@10 of
each anchor against all the file's positives (:func:`metriclearn.metrics.pair_metrics`).

An image ``.csv`` with open-metric-learning's columns is measured their way (:mod:`metriclearn.images.roles`):
only its ``split=validation`` rows when it has a ``split``, and with ``is_query``/``is_gallery`` its queries
searching its gallery (an item never finding itself) instead of leave-one-out.

The data's classes may be the run's own or new ones (the standard protocol of metric learning trains on some
classes and measures retrieval on others): retrieval is leave-one-out within ``--data``, or searches
``--reference``. The output says which classes were seen in training, and when ``--data`` mixes both kinds
it also measures each kind on its own (``retrieval_seen`` / ``retrieval_unseen``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._choices import LAYERS
from metriclearn._device import DEVICES
from metriclearn.cli._inputs import (
    check_distinct_files,
    csv_columns,
    examples,
    image_data_options,
    label_column_option,
    quiet_option,
)

SECTIONS = ("pairs", "retrieval", "retrieval_vs_reference", "retrieval_seen", "retrieval_unseen", "separation")


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics of a run or an evaluation (the shape of ``metrics.json``) as a few aligned lines."""
    data = metrics.get("data", {})
    split = metrics.get("split", data.get("source", "val"))
    if metrics.get("val_classes"):  # train --val-split classes
        split = f"{split}: {len(metrics['val_classes'])} classes unseen in training"
    n = metrics.get("n_eval", data.get("n_query", "?"))
    unit = "pairs" if "pairs" in metrics else "samples"
    lines = [f"held-out metrics ({split}, {n} {unit}):" if "split" in metrics
             else f"metrics of {split} ({n} {unit}):"]
    for section in SECTIONS:
        if section in metrics:
            values = "  ".join(f"{k} {v:.4f}" for k, v in metrics[section].items() if isinstance(v, (int, float)))
            lines.append(f"  {section:<23} {values}")
    for key, value in metrics.items():
        if key.startswith("knn_accuracy_k"):
            lines.append(f"  {key:<23} {value:.4f}")
    if "seen_classes" in data:
        seen, unseen = data["seen_classes"], data["unseen_classes"]
        lines.append(f"  classes seen in training: {len(seen)} ({_few(seen)}); "
                     f"not seen: {len(unseen)} ({_few(unseen)})")
    return "\n".join(lines)


def _few(values: list[Any], limit: int = 8) -> str:
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "") if values else "none"


@click.command("evaluate", epilog=examples(
    'metriclearn evaluate --model runs/digits --data digits',
    'metriclearn evaluate --model runs/mine --data test.csv --reference train.csv --json',
))
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Trained run directory.")
@click.option("--data", required=True, metavar="PATH|digits",
              help="Labelled queries; their classes may be the run's or new ones.")
@click.option("--reference", metavar="PATH",
              help="Labelled reference set to search (default: leave-one-out in --data).")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the metrics JSON "
              "(default DIR/evaluate.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Samples embedded at once.")
@click.option("--layer", type=click.Choice(LAYERS), default="embedding", show_default=True,
              help="'hidden': the MLP's last hidden layer (before its ReLU), which retrieves new classes better.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="A calibrated index of this model's embeddings: also report ECE, coverage and mean set size "
              "(and the rejection rule's precision) of each calibration it holds.")
@image_data_options
@label_column_option
@quiet_option
def evaluate(model_dir: str, data: str, reference: str | None, out: str | None, as_json: bool, batch_size: int,
             layer: str, device: str, index_dir: Path | None, workers: int, skip_bad_images: bool, label_column: str,
             quiet: bool) -> None:
    """Retrieval and separation metrics of a trained run on DATA (printed and written as JSON)."""
    from metriclearn._atomic import write_json
    from metriclearn.data import load_data
    from metriclearn.metrics import embedding_metrics
    from metriclearn.runs import load_run

    if index_dir is not None and layer != "embedding":
        raise click.BadParameter("an index holds the model's output embeddings; use --index with --layer embedding",
                                 param_hint="--index")
    check_distinct_files([("--out", out)], [("--data", data), ("--reference", reference)])
    run = load_run(model_dir)
    sources = [data] if reference is None else [data, reference]  # both read and checked before any embedding
    loaded = [load_data(s, classes=run.classes, unseen="append", columns=csv_columns(label_column),
                        images=run.image_options(workers, skip_bad_images)) for s in sources]
    if any(d.is_pairs for d in loaded):
        if reference is not None or index_dir is not None or layer != "embedding":
            raise click.UsageError("a pair file is measured on its own pairs (each anchor against all its "
                                   "positives): --reference, --index and --layer do not apply")
        metrics = _pair_metrics(run, loaded[0], batch_size, device)
        target = Path(out) if out else Path(model_dir) / "evaluate.json"
        write_json(target, metrics)
        click.echo(json.dumps(metrics, indent=2) if as_json else f"{format_metrics(metrics)}\nwrote {target}")
        return
    if index_dir is not None:  # calibrated on another model's embeddings, it would measure nothing: refuse early
        from metriclearn.cli._inputs import check_built_by
        from metriclearn.indexes import describe

        check_built_by(describe(index_dir)["model_fingerprint"], index_dir, run)
    masks = None
    if reference is not None:
        for flag, source, part in (("--data", data, loaded[0]), ("--reference", reference, loaded[1])):
            roles = part.roles
            if roles is not None and any(c is not None for c in (roles.split, roles.is_query, roles.is_gallery)):
                warnings.warn(f"{flag} {source}: its split / is_query / is_gallery columns are not used with "
                              "--reference (every --data row is a query, every --reference row is searched); "
                              "leave out --reference to evaluate by those columns", stacklevel=1)
    if reference is None and loaded[0].roles is not None:  # an image CSV's split / is_query / is_gallery
        rows = loaded[0].roles.evaluated()
        masks = loaded[0].roles.query_gallery(rows)
        loaded[0] = loaded[0].subset(rows)
    labels = loaded[0].y
    if masks is None and reference is None and labels is not None and not (np.bincount(labels) > 1).any():
        raise ValueError(f"{data}: no class has two or more rows, so leave-one-out retrieval measures nothing; "
                         "add rows or give --reference PATH")
    query, *refs = [run.embed(d, batch_size=batch_size, device=device, require_labels=True, layer=layer)
                    for d in loaded]
    ref = refs[0] if refs else None
    q_labels = query.label_values()
    if masks is not None:
        assert q_labels is not None  # embedded with require_labels=True
        metrics = _query_gallery(query.embeddings, q_labels, *masks)
    else:
        metrics = embedding_metrics(query.embeddings, q_labels, *(() if ref is None else
                                                                  (ref.embeddings, ref.label_values())))
        metrics.update(_by_group(query, ref))
    seen, unseen = query.present_classes()
    assert query.labels is not None  # embedded with require_labels=True
    n_seen = int(np.count_nonzero(query.labels < query.known))
    metrics["data"].update(source=str(data), reference=reference, layer=layer, seen_classes=seen,
                           unseen_classes=unseen, n_seen=n_seen, n_unseen=len(query.labels) - n_seen)
    if index_dir is not None:
        from metriclearn.cli.calibrate import calibration_metrics

        metrics["calibration"] = calibration_metrics(index_dir, query.embeddings, q_labels, device)
    if out:
        target = Path(out)
        write_json(target, metrics)
    else:  # into the run folder, recorded in its marker (train --overwrite then replaces it too)
        from metriclearn._outdir import record_written

        with record_written(model_dir, "evaluate.json") as target:
            write_json(target, metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    click.echo(format_metrics(metrics))
    if "calibration" in metrics:
        from metriclearn.cli.calibrate import format_calibration_metrics

        click.echo(format_calibration_metrics(metrics["calibration"]))
    click.echo(f"wrote {target}")


def _pair_metrics(run: Any, pairs: Any, batch_size: int, device: str) -> dict[str, Any]:
    """``pairs`` (:func:`~metriclearn.metrics.pair_metrics` of the anchors against all positives) and
    ``retrieval`` (leave-one-out among anchors and positives, a pair's two texts as a class) of a pair file."""
    from metriclearn.data import LabeledData
    from metriclearn.metrics import pair_metrics, retrieval_metrics

    pairs = pairs.subset_pairs(np.arange(len(pairs.pairs)), negatives=False)
    texts = LabeledData(X=pairs.X, y=None, classes=[], source=pairs.source)
    embeddings = run.embed(texts, batch_size=batch_size, device=device).embeddings
    anchors, positives = embeddings[pairs.pairs[:, 0]], embeddings[pairs.pairs[:, 1]]
    return {"pairs": pair_metrics(anchors, positives), "retrieval": retrieval_metrics(embeddings, pairs.y),
            "data": {"source": pairs.source, "n_query": len(pairs.pairs), "n_pairs": len(pairs.pairs)}}


def _query_gallery(embeddings: np.ndarray, labels: np.ndarray, is_query: np.ndarray,
                   is_gallery: np.ndarray) -> dict[str, Any]:
    """The metrics of an image CSV's queries searching its gallery (:func:`~metriclearn.metrics.query_gallery_metrics`),
    in ``metrics.json``'s shape; separation is measured on every evaluated row."""
    from metriclearn.metrics import query_gallery_metrics, separation_metrics

    k = 5
    return {"retrieval": query_gallery_metrics(embeddings, labels, is_query, is_gallery, k=k),
            "separation": separation_metrics(embeddings, labels),
            "data": {"n_query": int(is_query.sum()), "n_reference": int(is_gallery.sum()),
                     "n_both": int((is_query & is_gallery).sum()), "protocol": "query/gallery",
                     "dim": int(embeddings.shape[1]), "n_classes": len(np.unique(labels)), "metric": "l2", "k": k}}


def _by_group(query: Any, ref: Any) -> dict[str, Any]:
    """``retrieval_seen`` / ``retrieval_unseen`` when the queries mix both kinds of classes.

    Each group's queries search the reference (or, leave-one-out, the other queries of their group); a group
    in which no query has a same-class item to find is left out.
    """
    from metriclearn.metrics import retrieval_metrics

    seen = query.labels < query.known
    if seen.all() or not seen.any():
        return {}
    values = query.label_values()
    groups = {}
    for name, rows in (("retrieval_seen", seen), ("retrieval_unseen", ~seen)):
        y = values[rows]
        if ref is None:
            findable = (np.unique(y, return_counts=True)[1] > 1).any()
            args: tuple[Any, ...] = ()
        else:
            findable = np.isin(y, ref.label_values()).any()
            args = (ref.embeddings, ref.label_values())
        if findable:
            groups[name] = retrieval_metrics(query.embeddings[rows], y, *args)
    return groups
