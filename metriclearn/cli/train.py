"""``metriclearn train``.

``train`` builds a :class:`~metriclearn.training.config.TrainConfig` from ``--config FILE.toml`` and the
flags (flags win), trains into a run directory and prints the held-out metrics (``embed`` and
``evaluate`` apply a run directory to a data file: :mod:`metriclearn.cli.embed`, :mod:`metriclearn.cli.evaluate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from metriclearn._choices import BUILTIN_LOSSES, COMBINES
from metriclearn._distributed import decide_on_main
from metriclearn._progress import is_quiet, set_quiet
from metriclearn.cli._inputs import examples, quiet_option
from metriclearn.cli.evaluate import format_metrics
from metriclearn.training.config import (
    DEVICES,
    MONITORS,
    TrainConfig,
    read_toml,
)
from metriclearn.training.optim import OPTIMIZERS, SCHEDULERS
from metriclearn.training.splits import VAL_SPLITS


def _check_losses(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Each ``--loss`` term through the one parser, so a bad one names the flag (exit 2)."""
    from metriclearn.losses.registry import parse_loss_term  # imports torch: only when --loss is given

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


def _default(key: str) -> Any:
    """The config's default for ``key``, read from the dataclass field (making a config would import torch)."""
    spec = TrainConfig.__dataclass_fields__[key]
    if spec.default is dataclasses.MISSING and callable(spec.default_factory):
        return spec.default_factory()
    return spec.default


def _setting(name: str, help: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A ``--NAME`` option for the config key NAME: no default of its own (only given flags reach the config);
    its help text ends with the config's default, so the two never disagree."""
    key = name.lstrip("-").split("/")[0].replace("-", "_")
    default = _default(key)
    shown = " ".join(default) if isinstance(default, list) else ("on" if default is True else
                                                                 "off" if default is False else default)
    return click.option(name, help=f"{help} [default: {shown}]", **({"default": None} if "/" in name else {}),
                        **kwargs)


@click.command("train", epilog=examples(
    'metriclearn train --data digits --out runs/digits',
    'metriclearn train --data train.csv --label-column species --epochs 30 --out runs/mine',
    'metriclearn train --data train.csv --out runs/mine --resume',
))
@_setting("--data", "Training data (.npz/.csv/.jsonl, an image folder or a .csv with a path column) or 'digits'.",
          metavar="PATH|digits")
@_setting("--label-column", "The label column of a .csv --data (every other column is a numeric feature).",
          metavar="NAME")
@_setting("--loss", f"Loss term; repeat to combine: {', '.join(BUILTIN_LOSSES)}.", multiple=True,
          metavar="NAME[:WEIGHT]", callback=_check_losses)
@_setting("--combine", "How several losses combine.", type=click.Choice(COMBINES))
@_setting("--encoder", "Encoder spec, e.g. 'mlp:512,256', 'sentence', 'hf-vision:DIR'.",
          metavar="mlp|cnn|sentence[:PATH]|hf-vision:DIR|torchvision:NAME|timm:NAME")
@click.option("--encoder-option", "encoder_options", multiple=True, metavar="KEY=VALUE",
              callback=_parse_encoder_options,
              help="Encoder keyword argument; repeat for several, e.g. chunk_size=32 or cache_size=0 (sentence).")
@_setting("--finetune/--no-finetune", "Fine-tune the pretrained transformer or vision backbone (else only the head "
          "trains).")
@_setting("--unfreeze", "With --finetune: only the top N transformer blocks / backbone stages (0: all).", type=int,
          metavar="N")
@_setting("--encoder-lr", "With --finetune: the pretrained body's (peak) learning rate (--lr: the head's).",
          type=float)
@_setting("--pooling", "Sentence pooling over the tokens.", type=click.Choice(("mean", "cls")))
@_setting("--max-length", "Truncate texts to N tokens (0: the model's limit).", type=int, metavar="N")
@_setting("--gradient-checkpointing/--no-gradient-checkpointing",
          "With --finetune: recompute activations in the backward pass (less memory, more time).")
@_setting("--augment", "Training augmentation of images (random resized crop, flip; strong: colour jitter).",
          type=click.Choice(("none", "light", "strong")))
@_setting("--image-size", "Decode images at N x N (0: the backbone's input size, else the first image's).",
          type=int, metavar="N")
@_setting("--workers", "Processes decoding images (0: this one).", type=int, metavar="N")
@_setting("--skip-bad-images/--no-skip-bad-images", "Skip (and list) images that cannot be read, instead of "
          "stopping at the first.")
@_setting("--embedding-dim", "Embedding size.", type=int)
@_setting("--normalize/--no-normalize", "L2-normalise the embeddings.")
@_setting("--epochs", "Training epochs.", type=int)
@_setting("--batch-size", "Batch size (class-balanced); for pair data, whole pairs per batch.", type=int)
@_setting("--samples-per-class", "Samples of each class in a batch (M); not used for pair data.", type=int)
@_setting("--lr", "(Peak) learning rate.", type=float)
@_setting("--weight-decay", "Weight decay (not on biases and normalisation weights).", type=float)
@_setting("--optimizer", "Optimiser.", type=click.Choice(OPTIMIZERS))
@_setting("--scheduler", "Learning-rate schedule.", type=click.Choice(SCHEDULERS))
@_setting("--grad-clip", "Max gradient norm (0: off).", type=float)
@_setting("--patience", "Early stopping patience in epochs (0: off).", type=int)
@_setting("--restore-best/--no-restore-best", "model.pt holds the epoch with the best validation --monitor "
          "(checkpoints/best.pt), not the last.")
@_setting("--monitor", "Validation metric for early stopping, best.pt, plateau.", type=click.Choice(MONITORS))
@_setting("--seed", "Random seed (runs are deterministic on CPU).", type=click.IntRange(0, 2**32 - 1))
@_setting("--device", "auto (CUDA when available), cpu or cuda.", type=click.Choice(DEVICES))
@_setting("--amp/--no-amp", "Mixed precision on CUDA; bf16 on a CPU with native bf16 when fine-tuning a transformer.")
@_setting("--compile/--no-compile", "torch.compile the encoder for training (slower on CPU so far: BENCHMARKS.md).")
@_setting("--checkpoint-every", "Also checkpoint every N batches (0: each epoch end).", type=int)
@_setting("--threads", "CPU threads for torch (0: torch's default).", type=int)
@_setting("--val-fraction", "Held-out share for validation metrics.", type=float)
@_setting("--val-split", "Hold out samples of every class, or whole classes (validation on unseen classes).",
          type=click.Choice(VAL_SPLITS))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these settings.")
@click.option("--resume", is_flag=True,
              help="Continue the killed run in --out exactly where it stopped: re-run the same command plus --resume.")
@click.option("--overwrite", is_flag=True, help="Replace a previous metriclearn run in --out.")
@_setting("--report/--no-report", "Write tSNE/UMAP plots and a centroid movie.")
@click.option("--overfit-batch", is_flag=True, help="Only check the model can fit one batch (pass/fail).")
@quiet_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<timestamp>).")
def train(config_file: str | None, resume: bool, overwrite: bool, overfit_batch: bool, quiet: bool,
          out: str | None, **flags: Any) -> None:
    """Train an embedding model and write a run directory (model.pt, config.toml, metrics.json, ...).

    A killed run continues exactly with the same command plus --resume.
    """
    from metriclearn._outdir import check_output_dir, new_output_dir
    from metriclearn.training.resume import resume_config, run_state
    from metriclearn.training.run import train_run
    from metriclearn.training.trainer import DamagedCheckpoint

    if quiet:
        set_quiet(True)
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "loss" in given:
        given["loss"] = list(given["loss"])
    if resume:
        if out is None:
            raise click.UsageError("--resume needs --out DIR (the run to continue)")
        if overwrite:
            raise click.UsageError("--resume and --overwrite exclude each other: continue the run, or replace it")
        requested = {**(read_toml(config_file) if config_file else {}), **given}
        check_output_dir(out, "run", resume=True)  # a user's folder is not a run, whatever its files
        if run_state(out) == "finished":
            click.echo(f"{out} is already finished (model.pt written); nothing to resume")
            return
        try:  # loads the checkpoint and checks the settings once; train_run continues from it
            point = resume_config(out, requested)
        except DamagedCheckpoint:  # the file is bad, not the command: exit 1, one line
            raise
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        config, resume_from = point.config, point
    else:
        config, resume_from = _build_config(config_file, given), None
    verbose = not (quiet or is_quiet())
    if overfit_batch:
        _overfit(config, verbose)
        return
    # reserved (runs started in the same second differ); under torchrun rank 0 names it for every rank
    run_dir = Path(out) if out else Path(decide_on_main(lambda: str(new_output_dir("runs"))))
    try:
        metrics = train_run(config, run_dir, resume=resume_from or False, verbose=verbose, overwrite=overwrite)
    except BaseException:
        if out is None:  # a refused default run leaves no empty runs/<timestamp> behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    if not metrics:  # another rank than 0 under torchrun: rank 0 reports
        return
    click.echo(f"run: {run_dir}")
    click.echo(format_metrics(metrics))


def _build_config(config_file: str | None, given: dict[str, Any]) -> TrainConfig:
    base = TrainConfig.from_toml(config_file) if config_file else TrainConfig()
    try:
        return base.replace(**given)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


def _overfit(config: TrainConfig, verbose: bool) -> None:
    from metriclearn.training.run import overfit_batch_check

    result = overfit_batch_check(config, verbose=verbose)
    click.echo(str(result))
    if not result.passed:
        raise click.ClickException("the model cannot fit a single batch; check the data, labels, lr and loss settings")
