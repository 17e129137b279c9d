"""``metriclearn calibrate``: calibrate a labelled index directory for ``classify --sets`` / ``--reject``.

The calibration (:meth:`metriclearn.classify.calibration.CalibrationMixin.calibrate`) is stored in the
index's checksummed manifest as ``attrs["calibration"][METHOD]`` (one per method, ``knn`` and ``cache``);
a rebuilt index, or one that vectors were added to or removed from, no longer carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from metriclearn.classify.defaults import DEFAULT_K
from metriclearn.cli._inputs import (
    check_dim,
    check_k,
    check_same_model,
    check_source,
    csv_columns,
    examples,
    quiet_option,
    read_vectors,
    vector_options,
)
from metriclearn.cli.classify import _device_option, _load_index


@click.command("calibrate", epilog=examples(
    'metriclearn calibrate --index idx --embeddings cal.npy --labels cal_labels.npy --method knn',
    'metriclearn calibrate --index idx --model runs/digits --data cal.csv --method cache --target-precision 0.95',
))
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path),
              help="Labelled index directory (metriclearn index build ... --labels FILE.npy); updated in place.")
@vector_options("--embeddings", "Held-out embeddings (n, d) .npy: rows that neither the model nor the index saw "
                "(--features: its older name).", labels_flag="--labels", aliases=("--features",))
@click.option("--method", required=True, type=click.Choice(["knn", "cache"]), help="Which classifier to calibrate.")
@click.option("--alpha", type=float, default=0.1, show_default=True,
              help="Miscoverage α: prediction sets hold the true class with probability ≥ 1 − α.")
@click.option("--target-precision", type=float, default=None,
              help="Fit the open-set rejection rule of `classify --reject` for this precision in (0, 1].")
@click.option("--unseen-share", type=float, default=0.25, show_default=True,
              help="With --target-precision: the share of inputs from never-seen classes the threshold assumes.")
@click.option("--score", type=click.Choice(["lac", "aps"]), default="lac", show_default=True,
              help="Conformal score: lac (smallest sets) or aps (adaptive sets).")
@click.option("--coverage", type=click.Choice(["marginal", "class"]), default="marginal", show_default=True,
              help="marginal: 1 − α over all rows; class: 1 − α within every class (one threshold per class).")
@click.option("--k", "k", type=int, default=None,
              help=f"knn: neighbours that vote (default {DEFAULT_K}); cache: only the k most similar keys "
              "(default: every key). `classify` then uses the same value.")
@click.option("--weights", type=click.Choice(["distance", "uniform"]), default=None,
              help="knn: vote weights (default distance).")
@click.option("--fit-fraction", type=float, default=0.3, show_default=True,
              help="Share of the rows that fit the probability calibration; the rest set the thresholds.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed of that split.")
@_device_option
@quiet_option
def calibrate(
    index_dir: Path,
    matrix: Path | None,
    labels: Path | None,
    model: Path | None,
    data: str | None,
    label_column: str,
    method: str,
    alpha: float,
    target_precision: float | None,
    unseen_share: float,
    score: str,
    coverage: str,
    k: int | None,
    weights: str | None,
    fit_fraction: float,
    seed: int,
    device: str,
    quiet: bool,
) -> None:
    """Calibrate an index's kNN or cache classifier on held-out rows and store the result in the index.

    The rows come from --embeddings FILE.npy --labels FILE.npy, or --model DIR --data PATH (labelled data the
    run embeds; an index built by another model is refused). Prints the expected calibration error before
    and after, the coverage and mean prediction-set size on the calibration rows that set the threshold, and
    the rejection threshold with its bootstrap uncertainty. A parameter chosen on the edge of its grid is a
    warning (the grid is widened).
    """
    if method == "cache" and weights is not None:
        raise click.UsageError("--weights applies to --method knn only")
    check_source(matrix, model, data, "--embeddings", labels, "--labels")
    if matrix is not None and labels is None:
        raise click.UsageError("--embeddings needs --labels FILE.npy (calibration rows must be labelled)")
    index = _load_index(index_dir, device)
    vectors = read_vectors(matrix, model, data, matrix_flag="--embeddings", what="embeddings", labels=labels,
                           labels_flag="--labels", device=device, columns=csv_columns(label_column))
    if vectors.labels is None:
        raise ValueError(f"{vectors.origin} has no labels; calibration rows must be labelled")
    check_same_model(index, index_dir, vectors)
    x, y = check_dim(vectors, index, index_dir), vectors.labels
    from metriclearn.classify.from_index import OptionClash, classifier_for

    try:
        classifier = classifier_for(index, method, check_k(k, index, index_dir) if k is not None else None, None,
                                    weights, device)
    except OptionClash as exc:
        raise click.UsageError(str(exc)) from None
    try:
        state = classifier.calibrate(x, y, alpha=alpha, target_precision=target_precision, score=score,
                                     coverage=coverage, unseen_share=unseen_share, fit_fraction=fit_fraction,
                                     random_state=seed).calibration_
    except ValueError as exc:
        raise ValueError(f"calibrating {str(index_dir)!r} on {vectors.origin}: {exc}") from None
    from metriclearn._distributed import is_main_process

    if not is_main_process():  # under torchrun every rank calibrated (a sharded index searches collectively);
        return  # rank 0 alone stores it and prints
    stored = dict(index.attrs.get("calibration") or {})
    stored[method] = state
    index.attrs["calibration"] = stored
    index.save_attrs(index_dir)  # the manifest only: the vectors are as they were loaded
    for line in summary_lines(state):
        click.echo(line)
    click.echo(f"calibration stored in {index_dir} (attrs['calibration']['{method}'] of its manifest)")


def summary_lines(state: dict[str, Any]) -> list[str]:
    """What a calibration measured, for people: parameters, ECE, coverage, set size, rejection."""
    conf = state["conformal"]
    params = ", ".join(f"{key} {value:.4g}" for key, value in state["probability"].items())
    lines = [
        f"{state['method']}: {state['n_fit']} rows fit the probabilities ({params}); "
        f"{state['n_calibration']} rows set the thresholds",
        f"ECE {state['ece_before']:.4f} before -> {state['ece_after']:.4f} after calibration",
        f"{conf['score']} sets at alpha={conf['alpha']:g}: coverage {state['coverage']:.4f} "
        f"(target >= {1 - conf['alpha']:.4f}), mean set size {state['mean_set_size']:.3f}, "
        f"empty {state['empty_sets']:.2%}",
    ]
    lowest = lowest_class_coverage(state.get("coverage_by_class"), state["classes"])
    if lowest:
        mode = conf.get("coverage", "marginal")
        always = sum(t is None for t in conf["threshold"]) if mode == "class" else 0
        lines.append(f"{mode} coverage: {lowest}" + (f"; {always} classes with too few rows are in every set"
                                                       if always else ""))
    rejection = state.get("rejection")
    if rejection:
        lines.append(
            f"rejection at target precision {rejection['target_precision']:g}: threshold "
            f"{rejection['threshold']:.4f}; on calibration rows: precision {rejection['precision']:.4f} "
            f"(with {rejection['unseen_share']:.0%} never-seen stand-ins), knowns kept {rejection['known_kept']:.2%}, "
            f"stand-ins rejected {rejection['unseen_rejected']:.2%}"
        )
        if rejection.get("threshold_interval") is not None:
            low, high = rejection["threshold_interval"]
            unreached = rejection.get("threshold_unreached") or 0.0
            lines.append(
                f"rejection threshold uncertainty ({state['n_calibration']} calibration rows): ± "
                f"{rejection['threshold_se']:.4f} (bootstrap SE), 90% of resamples within [{low:.4f}, {high:.4f}]"
                + (f"; {unreached:.0%} of resamples could not reach the target" if unreached else "")
            )
    return lines


def lowest_class_coverage(by_class: list[float | None] | None, classes: list[Any]) -> str:
    """``lowest class coverage 0.8123 (class 'dog')``, or ``""`` when there is nothing per class."""
    pairs = [(value, label) for value, label in zip(by_class or [], classes, strict=False) if value is not None]
    if not pairs:
        return ""
    value, label = min(pairs, key=lambda pair: pair[0])
    return f"lowest class coverage {value:.4f} (class {label!r})"


def calibration_metrics(index_dir: Path, embeddings: Any, labels: Any, device: str) -> dict[str, Any]:
    """``evaluate --index``: :func:`evaluate_calibration` of every calibration stored in the index."""
    from metriclearn.classify.calibration import evaluate_calibration
    from metriclearn.classify.from_index import calibrated_classifier

    index = _load_index(index_dir, device)
    calibrations = index.attrs.get("calibration") or {}
    if not calibrations:
        raise ValueError(
            f"index {str(index_dir)!r} is not calibrated: run `metriclearn calibrate --index {index_dir} ...` first"
        )
    if index.dim != embeddings.shape[1]:
        raise ValueError(f"index {str(index_dir)!r} has dimension {index.dim}, but the model embeds to "
                         f"{embeddings.shape[1]}: it was built from another model's embeddings")
    return {method: evaluate_calibration(calibrated_classifier(index, method, state, device, index_dir), embeddings,
                                         labels)
            for method, state in calibrations.items()}


def format_calibration_metrics(metrics: dict[str, Any]) -> str:
    """The lines ``evaluate --index`` prints for :func:`calibration_metrics`."""
    lines = []
    for method, m in metrics.items():
        head = f"  calibrated {method:<14} "
        if "coverage" in m:
            head += (f"ECE {m['ece']:.4f}  coverage {m['coverage']:.4f}  mean set size {m['mean_set_size']:.3f}  "
                     f"empty {m['empty_sets']:.2%}")
            lowest = lowest_class_coverage(m.get("coverage_by_class"), m.get("classes", []))
            head += f"  ({lowest})" if lowest else ""
        unseen = f"  ({m['n_unseen']} of {m['n']} rows of classes not in the index)" if m["n_unseen"] else ""
        lines.append(head + unseen)
        if "known_kept" in m:
            parts = [f"{key.replace('_', ' ')} {m[key]:.4f}" for key in ("accepted_precision", "known_kept",
                                                                        "unseen_rejected") if m[key] is not None]
            lines.append(f"  {'rejection':<25} " + "  ".join(parts))
    return "\n".join(lines)
