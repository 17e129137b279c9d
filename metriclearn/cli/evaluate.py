"""``metriclearn evaluate``: retrieval and separation metrics of a trained run on a data file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from metriclearn.training.config import DEVICES


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics of a run or an evaluation as a few aligned lines."""
    lines = [f"held-out metrics ({metrics.get('split', 'val')}, {metrics.get('n_eval', '?')} samples):"]
    for section in ("retrieval", "retrieval_vs_reference", "separation"):
        if section in metrics:
            values = "  ".join(f"{k} {v:.4f}" for k, v in metrics[section].items() if isinstance(v, (int, float)))
            lines.append(f"  {section:<23} {values}")
    for key, value in metrics.items():
        if key.startswith("knn_accuracy_k"):
            lines.append(f"  {key:<23} {value:.4f}")
    return "\n".join(lines)


@click.command("evaluate")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Trained run directory.")
@click.option("--data", required=True, metavar="PATH|digits", help="Queries with labels.")
@click.option("--reference", metavar="PATH", help="Reference set to search (default: leave-one-out in --data).")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the metrics JSON "
              "(default DIR/evaluate.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def evaluate(model_dir: str, data: str, reference: str | None, out: str | None, as_json: bool, device: str) -> None:
    """Retrieval and separation metrics of a trained run on DATA (printed and written as JSON)."""
    from metriclearn._atomic import write_json
    from metriclearn.training.run import embed_from_run, evaluate_embeddings

    query, query_labels, _ = embed_from_run(model_dir, data, device=device)
    ref, ref_labels = (None, None)
    if reference is not None:
        ref, ref_labels, _ = embed_from_run(model_dir, reference, device=device)
    metrics = evaluate_embeddings(query, query_labels, ref, ref_labels)
    metrics.update(split=str(data), n_eval=int(len(query_labels)), reference=reference)
    target = Path(out) if out else Path(model_dir) / "evaluate.json"
    write_json(target, metrics)
    click.echo(json.dumps(metrics, indent=2) if as_json else format_metrics(metrics) + f"\nwrote {target}")
