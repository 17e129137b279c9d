"""``metriclearn train``.

``train`` builds a :class:`~metriclearn.training.config.TrainConfig` from ``--config FILE.toml`` and the
flags (flags win), trains into a run directory and prints the held-out metrics (``embed`` and
``evaluate`` apply a run directory to a data file: :mod:`metriclearn.cli.embed`, :mod:`metriclearn.cli.evaluate`).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._progress import is_quiet, set_quiet
from metriclearn.cli._inputs import quiet_option
from metriclearn.cli.evaluate import format_metrics
from metriclearn.training.config import (
    COMBINES,
    DEVICES,
    MONITORS,
    OPTIMIZERS,
    SCHEDULERS,
    TrainConfig,
    parse_loss_term,
)

_RESUME_OVERRIDABLE = ("device", "threads", "amp")


def _check_losses(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for term in value:
        try:
            parse_loss_term(term)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _parse_encoder_options(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs → dict; values are JSON (``false``, ``128``) or else plain strings."""
    options: dict[str, Any] = {}
    for item in value:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options or None


@click.command("train")
@click.option("--data", metavar="PATH|digits", help="Training data (.npz/.csv/.jsonl) or 'digits' (default).")
@click.option("--loss", multiple=True, metavar="NAME[:WEIGHT]", callback=_check_losses,
              help="Loss term; repeat to combine: neighborhood, snn, prototype, cache, softmax, complement.")
@click.option("--combine", type=click.Choice(COMBINES), help="How several losses combine (default: sum).")
@click.option("--encoder", metavar="mlp|cnn|sentence[:PATH]", help="Encoder spec, e.g. 'mlp:512,256' (default mlp).")
@click.option("--encoder-option", "encoder_options", multiple=True, metavar="KEY=VALUE",
              callback=_parse_encoder_options,
              help="Encoder keyword argument; repeat for several, e.g. freeze=false or max_length=128 (sentence).")
@click.option("--embedding-dim", type=int, help="Embedding size (default 64).")
@click.option("--normalize/--no-normalize", default=None, help="L2-normalise the embeddings (default on).")
@click.option("--epochs", type=int, help="Training epochs.")
@click.option("--batch-size", type=int, help="Batch size (class-balanced).")
@click.option("--samples-per-class", type=int, help="Samples of each class in a batch (M).")
@click.option("--lr", type=float, help="(Peak) learning rate.")
@click.option("--weight-decay", type=float, help="AdamW weight decay.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Optimiser (default adamw).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), help="Learning-rate schedule.")
@click.option("--grad-clip", type=float, help="Max gradient norm (0: off).")
@click.option("--patience", type=int, help="Early stopping patience in epochs (0: off).")
@click.option("--monitor", type=click.Choice(MONITORS), help="Validation metric for early stopping, best.pt, plateau.")
@click.option("--seed", type=int, help="Random seed (runs are deterministic on CPU).")
@click.option("--device", type=click.Choice(DEVICES), help="auto (CUDA when available), cpu or cuda.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (default on).")
@click.option("--checkpoint-every", type=int, help="Also checkpoint every N batches (0: each epoch end).")
@click.option("--threads", type=int, help="CPU threads for torch (0: torch's default).")
@click.option("--val-fraction", type=float, help="Held-out share for validation metrics (default 0.2).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these settings.")
@click.option("--resume", is_flag=True, help="Continue the killed run in --out exactly where it stopped.")
@click.option("--report/--no-report", default=None, help="Write tSNE/UMAP plots and a centroid movie.")
@click.option("--overfit-batch", is_flag=True, help="Only check the model can fit one batch (pass/fail).")
@quiet_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<timestamp>).")
def train(config_file: str | None, resume: bool, overfit_batch: bool, quiet: bool, out: str | None,
          **flags: Any) -> None:
    """Train an embedding model and write a run directory (model.pt, config.toml, metrics.json, ...)."""
    from metriclearn.training.run import train_run

    if quiet:
        set_quiet(True)
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "loss" in given:
        given["loss"] = list(given["loss"])
    if resume:
        if out is None:
            raise click.UsageError("--resume needs --out DIR (the run to continue)")
        changed = sorted(set(given) - set(_RESUME_OVERRIDABLE)) + (["config"] if config_file else [])
        if changed:
            flags_text = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise click.UsageError(f"--resume continues the run as configured in {out}/config.toml; "
                                   f"drop {flags_text}")
        config = TrainConfig.from_toml(Path(out) / "config.toml")
        config = config.replace(**given)
    else:
        config = _build_config(config_file, given)
    verbose = not (quiet or is_quiet())
    if overfit_batch:
        _overfit(config, verbose)
        return
    run_dir = Path(out) if out else _new_run_dir(Path("runs"))
    metrics = train_run(config, run_dir, resume=resume, verbose=verbose)
    click.echo(f"run: {run_dir}")
    click.echo(format_metrics(metrics))


def _new_run_dir(root: Path) -> Path:
    """``root/<YYYYmmdd-HHMMSS>``, with a ``-2``, ``-3`` ... suffix when that name is taken."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def _build_config(config_file: str | None, given: dict[str, Any]) -> TrainConfig:
    base = TrainConfig.from_toml(config_file) if config_file else TrainConfig()
    try:
        return base.replace(**given)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


def _overfit(config: TrainConfig, verbose: bool) -> None:
    from metriclearn.data import load_data
    from metriclearn.training.run import build_model, make_trainer
    from metriclearn.training.trainer import seed_everything

    seed_everything(config.seed)
    data = load_data(config.data)
    input_shape = tuple(np.shape(data.X)[1:]) if isinstance(data.X, np.ndarray) else ()
    trainer = make_trainer(config, build_model(config, input_shape), data.num_classes, verbose=verbose)
    losses = trainer.overfit_batch(data, steps=200)
    first, last = losses[0], losses[-1]
    passed = last <= 0.1 * first if first > 0 else last < first
    verdict = "PASS" if passed else "FAIL"
    click.echo(f"overfit-batch: {verdict}: loss {first:.4f} -> {last:.4f} after {len(losses)} steps on one batch "
               f"of {config.batch_size}")
    if not passed:
        raise click.ClickException("the model cannot fit a single batch; check the data, labels, lr and loss settings")
