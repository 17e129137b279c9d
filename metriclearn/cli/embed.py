"""``metriclearn embed``: embed a data file with a trained run directory and save the embeddings as ``.npy``."""

from __future__ import annotations

import click

from metriclearn.training.config import DEVICES


@click.command("embed")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Trained run directory.")
@click.option("--data", required=True, metavar="PATH|digits", help="Data to embed (.npz/.csv/.jsonl or 'digits').")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output FILE.npy (n, D) float32.")
@click.option("--labels-out", type=click.Path(dir_okay=False), help="Also write the encoded labels (.npy).")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def embed(model_dir: str, data: str, out: str, labels_out: str | None, batch_size: int, device: str) -> None:
    """Embed DATA with a trained run and save the embeddings as .npy."""
    from metriclearn._atomic import save_npy
    from metriclearn.training.distributed import is_main_process
    from metriclearn.training.run import embed_from_run

    if not out.endswith(".npy"):
        raise click.BadParameter(f"must end in .npy, got {out!r}", param_hint="--out")
    embeddings, labels, _ = embed_from_run(model_dir, data, batch_size=batch_size, device=device)
    if not is_main_process():  # under torchrun every rank embedded a shard; rank 0 writes
        return
    save_npy(out, embeddings)
    if labels_out:
        save_npy(labels_out, labels)
    click.echo(f"wrote {out}: {embeddings.shape[0]} x {embeddings.shape[1]} float32")
