"""``metriclearn embed``: embed a data file with a trained run directory and save the embeddings as ``.npy``.

Labels are optional (an ``.npz`` without ``y``, a ``.csv`` without ``label``, a ``.jsonl`` without ``label``,
a ``.npy`` of raw inputs) and classes the run never saw are welcome: a learned space exists to serve new
classes. ``--labels-out`` writes the label values themselves (ints or strings, not codes), ready for
``index build --embeddings E.npy --labels L.npy`` or ``report``. A pair file (``anchor``/``positive`` lines)
gives two files: the anchors (``--out``) and the positives (``--positives-out``), row i of each from pair i.
"""

from __future__ import annotations

from typing import Any

import click

from metriclearn._choices import LAYERS
from metriclearn._device import DEVICES
from metriclearn.cli._inputs import check_distinct_files, csv_columns, examples, label_column_option, quiet_option


@click.command("embed", epilog=examples(
    'metriclearn embed --model runs/digits --data digits --out emb.npy --labels-out labels.npy',
))
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Trained run directory.")
@click.option("--data", required=True, metavar="PATH|digits",
              help="Data to embed: .npz / .csv / .jsonl (labels optional), a .npy of raw inputs, an image folder "
                   "or a .csv with a path column, or 'digits'.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output FILE.npy (n, D) float32.")
@click.option("--labels-out", type=click.Path(dir_okay=False),
              help="Also write the data's labels (.npy of their values, ints or strings).")
@click.option("--positives-out", type=click.Path(dir_okay=False),
              help="Pair file (anchor/positive lines): --out gets the anchors, this .npy the positives (row i: "
                   "pair i).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Samples embedded at once (a positive integer).")
@click.option("--layer", type=click.Choice(LAYERS), default="embedding", show_default=True,
              help="'hidden': the MLP's last hidden layer (before its ReLU), which retrieves new classes better.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes decoding image data (0: this one).")
@click.option("--skip-bad-images", is_flag=True, help="Skip (and list) images that cannot be read.")
@label_column_option
@quiet_option
def embed(model_dir: str, data: str, out: str, labels_out: str | None, positives_out: str | None, batch_size: int,
          layer: str, device: str, workers: int, skip_bad_images: bool, label_column: str, quiet: bool) -> None:
    """Embed DATA with a trained run and save the embeddings as .npy."""
    from metriclearn._atomic import save_npy
    from metriclearn._distributed import is_main_process
    from metriclearn.data import load_data
    from metriclearn.runs import load_run

    for flag, path in (("--out", out), ("--labels-out", labels_out), ("--positives-out", positives_out)):
        if path is not None and not path.endswith(".npy"):
            raise click.BadParameter(f"must end in .npy, got {path!r}", param_hint=flag)
    check_distinct_files([("--out", out), ("--labels-out", labels_out)], [("--data", data)])
    run = load_run(model_dir)
    inputs = load_data(data, classes=run.classes, require_labels=False, unseen="append",
                       columns=csv_columns(label_column), images=run.image_options(workers, skip_bad_images))
    if inputs.is_pairs != (positives_out is not None):
        raise click.UsageError(f"{data} is a pair file: give --positives-out P.npy for its positives (--out gets "
                               "the anchors)" if inputs.is_pairs else
                               f"--positives-out is for pair files (anchor/positive lines); {data} is not one")
    if inputs.is_pairs and positives_out is not None:  # (checked just above: they go together)
        _embed_pairs(run, inputs, out, positives_out, labels_out, batch_size, layer, device)
        return
    if labels_out and not inputs.is_labeled:  # say so before the (long) embedding
        raise ValueError(f"{data} has no labels to write to --labels-out {labels_out}")
    embedded = run.embed(inputs, batch_size=batch_size, device=device, layer=layer)
    if not is_main_process():  # under torchrun every rank embedded a shard; rank 0 writes
        return
    save_npy(out, embedded.embeddings)
    n, d = embedded.embeddings.shape
    click.echo(f"wrote {out}: {n} x {d} float32")
    values = embedded.label_values()
    if labels_out and values is not None:  # labelled data (checked above)
        save_npy(labels_out, values)
        seen, unseen = embedded.present_classes()
        click.echo(f"wrote {labels_out}: {n} labels, {len(seen)} class(es) seen in training, "
                   f"{len(unseen)} new")


def _embed_pairs(run: Any, pairs: Any, out: str, positives_out: str, labels_out: str | None, batch_size: int,
                 layer: str, device: str) -> None:
    """Anchors to ``out`` and positives to ``positives_out`` (row i of each: pair i); negatives are not embedded."""
    import numpy as np

    from metriclearn._atomic import save_npy
    from metriclearn._distributed import is_main_process
    from metriclearn.data import LabeledData

    if labels_out:
        raise click.UsageError("a pair file has no labels for --labels-out: row i of --out and --positives-out "
                               "is pair i")
    pairs = pairs.subset_pairs(np.arange(len(pairs.pairs)), negatives=False)
    texts = LabeledData(X=pairs.X, y=None, classes=[], source=pairs.source)
    embeddings = run.embed(texts, batch_size=batch_size, device=device, layer=layer).embeddings
    if not is_main_process():
        return
    for path, rows in ((out, pairs.pairs[:, 0]), (positives_out, pairs.pairs[:, 1])):
        save_npy(path, embeddings[rows])
        click.echo(f"wrote {path}: {len(rows)} x {embeddings.shape[1]} float32")
