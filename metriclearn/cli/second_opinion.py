"""``metriclearn second-opinion``: blend a model's probabilities with a cache of labelled features (Orhan 2018).

Two forms:

- ``--index DIR --features FILE.npy --probs FILE.npy``: features and probabilities the user already has; the
  cache is a labelled index directory; ``--probs`` columns follow the index's sorted distinct labels.
- ``--model MODEL --cache PATH --data PATH``: MODEL is a metriclearn run directory with a classification head,
  a Hugging Face model directory (text ``.jsonl`` data) or a TorchScript file (array data: ``.npz``, ``.csv``,
  or ``.npy`` without labels for ``--data``); the model's own features (``--layer``, default: chosen by
  ``--tune-data``, else the classifier's input) make the cache. ``--cache`` may also be a directory written
  by ``--save`` (refused for another model). ``--out`` columns follow the model's classes.

``--out FILE.npy`` holds the blended probabilities (n, K) float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._atomic import atomic_open, save_npy
from metriclearn.classify.defaults import DEFAULT_LAM, DEFAULT_THETA
from metriclearn.cli._inputs import (
    check_distinct_files,
    examples,
    image_data_options,
    load_probabilities,
    quiet_option,
)
from metriclearn.cli.classify import _check_output, _device_option, _load_features, _load_index

_MODEL_ONLY = ("cache", "data", "layers", "tune_data", "audit", "save", "workers", "skip_bad_images", "image_size")
_FEATURES_ONLY = ("index_dir", "features", "probs", "labels", "tune")
_FLAGS = {"index_dir": "index", "layers": "layer", "features": "embeddings"}  # parameter -> its option's name


@click.command("second-opinion", epilog=examples(
    'metriclearn second-opinion --index idx --embeddings feats.npy --probs probs.npy --labels labels.npy '
    '--out blend.npy',
    'metriclearn second-opinion --model my-classifier --cache train.jsonl --data test.jsonl --out blend.npy',
))
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="Features form: labelled index directory (the cache).")
@click.option("--embeddings", "--features", "features", type=click.Path(path_type=Path),
              help="Features form: the model's features / embeddings (n, d) .npy (--features: its older name).")
@click.option("--probs", type=click.Path(path_type=Path), help="Features form: the model's probabilities (n, K) .npy.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="Features form: the rows' labels (n,) .npy, to print the accuracy of the model and of the blend.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="Model form: a metriclearn run directory with a classification head, a Hugging Face model "
                   "directory or a TorchScript file.")
@click.option("--cache", type=click.Path(path_type=Path),
              help="Model form: labelled data for the cache (.jsonl / .npz / .csv, an image folder or path CSV), or a "
                   "directory written by --save.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Model form: the inputs to classify (.jsonl / .npz / .csv / image folder, or .npy without labels).")
@click.option("--layer", "layers", multiple=True, metavar="NAME",
              help="Model form: layer(s) whose features make the cache (module names; NAME:input for a module's "
                   "input). Default: chosen by --tune-data, else the input of the last nn.Linear.")
@click.option("--theta", type=float, default=None, help=f"Inverse temperature θ (default {DEFAULT_THETA:g}).")
@click.option("--lam", type=float, default=None, help=f"Weight λ of the cache (default {DEFAULT_LAM:g}).")
@click.option("--tune", nargs=3, type=click.Path(path_type=Path), default=None,
              metavar="FEATURES_VAL.npy PROBS_VAL.npy LABELS_VAL.npy",
              help="Features form: choose θ and λ on held-out data (not the index's own vectors).")
@click.option("--tune-data", type=click.Path(path_type=Path), default=None,
              help="Model form: labelled held-out data to choose θ, λ (and the layer when no --layer) on.")
@click.option("--audit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Model form: write the rows whose decision the blend changed, with evidence, as .jsonl.")
@click.option("--save", type=click.Path(path_type=Path), default=None,
              help="Model form: save the cache (an index directory with θ, λ, layers and the model's fingerprint).")
@click.option("--overwrite", is_flag=True, help="Replace what an earlier --save wrote there.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Model form: inputs per forward pass.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Model form: decode image --cache / --data / --tune-data at N x N (default: the model's input "
                   "size when it records one, else --data's first picture's shorter side, at most 224; the cache "
                   "and tuning data follow --data).")
@image_data_options
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Blended probabilities (n, K) .npy.")
@_device_option
@quiet_option
def second_opinion(out: Path, quiet: bool, **opts: Any) -> None:
    """Blend a model's probabilities with the cache's: (1 − λ)·p_model + λ·p_cache (Orhan 2018).

    Give either --index/--embeddings/--probs (features you already have) or --model/--cache/--data.
    """
    _check_output(out, (".npy",))
    check_distinct_files([("--out", out), ("--audit", opts["audit"]), ("--save", opts["save"])],
                         [(f"--{_FLAGS.get(name, name)}", opts[name])
                          for name in ("features", "probs", "labels", "data")])
    if opts["tune"] and (opts["theta"] is not None or opts["lam"] is not None):
        raise click.UsageError("--tune chooses θ and λ itself: give either --tune or --theta/--lam, not both")
    if opts["model_path"] is not None:
        _check_form(opts, "--model", needs=("cache", "data"), refused=_FEATURES_ONLY)
        _from_model(out, opts)
    elif opts["index_dir"] is not None:
        _check_form(opts, "--index", needs=("features", "probs"), refused=_MODEL_ONLY)
        _from_features(out, opts)
    else:
        raise click.UsageError("give --index DIR --embeddings F --probs P, or --model MODEL --cache PATH --data PATH")


def _check_form(opts: dict[str, Any], form: str, needs: tuple[str, ...], refused: tuple[str, ...]) -> None:
    """The options of one form of the command: refuse the other form's, require this one's."""
    _refuse(opts, refused, form)
    for name in needs:
        if opts[name] is None:
            raise click.UsageError(f"{form} needs --{_FLAGS.get(name, name)}")


def _refuse(opts: dict[str, Any], names: tuple[str, ...], form: str) -> None:
    given = [n for n in names if opts[n] not in (None, (), False)]
    if given:
        flag = _FLAGS.get(given[0], given[0]).replace("_", "-")
        raise click.UsageError(f"--{flag} does not go with {form}")


# ---------------------------------------------------------------------------------------------- features form
def _from_features(out: Path, opts: dict[str, Any]) -> None:
    from metriclearn.classify.cache import LAM_GRID, THETA_GRID, CacheClassifier
    from metriclearn.data import load_labels

    index = _load_index(opts["index_dir"], opts["device"])
    x = _load_features(opts["features"], "features", index.dim)
    num_classes = len(np.unique(index.labels))
    p = load_probabilities(opts["probs"], "--probs", len(x), num_classes)
    y = None if opts["labels"] is None else load_labels(opts["labels"], n=len(x))  # read before any work
    theta = DEFAULT_THETA if opts["theta"] is None else opts["theta"]
    lam = DEFAULT_LAM if opts["lam"] is None else opts["lam"]
    cache = CacheClassifier.from_index(index, theta=theta, lam=lam, device=opts["device"])
    tune = opts["tune"]
    if tune:
        x_val = _load_features(tune[0], "validation features", index.dim)
        p_val = load_probabilities(tune[1], "--tune PROBS_VAL", len(x_val), num_classes)
        y_val = load_labels(tune[2], n=len(x_val))
        cache.tune(x_val, p_val, y_val, THETA_GRID, LAM_GRID)
        best = np.asarray(cache.tuning_["accuracy"]).max()
        click.echo(f"tuned on {len(x_val)} held-out rows: theta={cache.theta_:g}, lam={cache.lam_:g} "
                   f"(validation accuracy {best:.4f})")
    blended = cache.second_opinion(x, p)
    save_npy(out, blended.astype(np.float32))
    click.echo(f"second opinion (theta={cache.theta_:g}, lam={cache.lam_:g}): {len(x)} rows written to {out}")
    if y is not None:
        from metriclearn.cli._accuracy import blend_lines

        classes = cache.classes_
        click.echo(blend_lines(y, classes[p.argmax(1)], classes[blended.argmax(1)], classes.tolist()))


# ---------------------------------------------------------------------------------------------- model form
def _from_model(out: Path, opts: dict[str, Any]) -> None:
    from metriclearn._device import resolve_device
    from metriclearn.pretrained import SecondOpinion
    from metriclearn.pretrained.loading import load_model

    if opts["audit"] is not None and Path(opts["audit"]).suffix.lower() != ".jsonl":
        raise click.BadParameter(f"{str(opts['audit'])!r} must end in .jsonl", param_hint="--audit")
    if opts["save"] is not None:  # refused before the model is loaded or anything is computed
        from metriclearn._outdir import check_output_dir

        check_output_dir(opts["save"], "index", overwrite=opts["overwrite"])
    loaded = load_model(opts["model_path"])
    for flag, path in (("--cache", opts["cache"]), ("--tune-data", opts["tune_data"]), ("--data", opts["data"])):
        if path is not None and not (flag == "--cache" and _saved_cache(Path(path))):  # before the cache is built
            check_input_kind(Path(path), loaded, flag)
    device = str(resolve_device(opts["device"]))
    loaded.model.to(device)
    options = {"tokenizer": loaded.tokenizer, "batch_size": opts["batch_size"], "device": device}
    layers = list(opts["layers"]) or None
    # every input is read (and refused) before the cache's features are computed
    images = _image_options(loaded, opts)
    x, y = read_inputs(opts["data"], loaded, "--data", labels="optional", images=images)
    images = _pinned(images, x)  # the cache and the tuning data are decoded as --data was
    if opts["tune_data"] is not None:
        x_val, y_val = read_inputs(opts["tune_data"], loaded, "--tune-data", labels="required", images=images)
    if _saved_cache(opts["cache"]):
        if layers is not None:
            raise click.UsageError("--layer does not go with a saved --cache directory (its layers are fixed)")
        opinion = SecondOpinion.load(opts["cache"], loaded.model, theta=opts["theta"], lam=opts["lam"], **options)
    else:
        x_cache, y_cache = read_inputs(opts["cache"], loaded, "--cache", labels="required", images=images)
        opinion = SecondOpinion(loaded.model, layers, opts["theta"], opts["lam"], classes=loaded.classes, **options)
        opinion.fit(x_cache, y_cache)
    if opts["tune_data"] is not None:
        assert y_val is not None  # read with labels="required"
        opinion.tune(x_val, y_val)
        scores = opinion.tuning_["layers"]
        click.echo(f"tuned on {len(y_val)} held-out rows: layer {opinion.tuning_['chosen']} "
                   f"(validation accuracy {scores[opinion.tuning_['chosen']]['accuracy']:.4f}; model alone "
                   f"{opinion.tuning_['model_accuracy']:.4f}; candidates: "
                   + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in scores.items()) + ")")
    opinions = opinion.opinions(x)
    p_model, _, p_blend, _ = opinions
    save_npy(out, p_blend.astype(np.float32))
    click.echo(f"second opinion: layer {', '.join(opinion.layers_)}, theta={opinion.theta_:g}, "
               f"lam={opinion.lam_:g}; {len(p_blend)} rows x {p_blend.shape[1]} classes written to {out}")
    if y is not None:
        from metriclearn.cli._accuracy import blend_lines
        from metriclearn.pretrained.second_opinion import align_labels

        codes = align_labels(y, opinion.classes_, p_model.shape[1], f"--data {opts['data']}")
        names = np.array(list(opinion.classes_) if opinion.classes_ is not None else range(p_model.shape[1]),
                         dtype=object)
        click.echo(blend_lines(names[codes], names[p_model.argmax(1)], names[p_blend.argmax(1)], names.tolist()))
    if opts["audit"] is not None:
        rows = opinion.audit_opinions(opinions, y)
        with atomic_open(opts["audit"], "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False, default=_plain) + "\n" for row in rows)
        outcomes = {k: sum(r.get("outcome") == k for r in rows) for k in ("fixed", "broke")}
        extra = f" (fixed {outcomes['fixed']}, broke {outcomes['broke']})" if y is not None else ""
        click.echo(f"audit: {len(rows)} changed decisions{extra} written to {opts['audit']}")
    if opts["save"] is not None:
        from metriclearn._outdir import claim_output_dir

        with claim_output_dir(opts["save"], "index", overwrite=opts["overwrite"]):
            opinion.save(opts["save"])
        click.echo(f"cache saved to {opts['save']} (load it again with --cache {opts['save']})")


def _saved_cache(path: Path) -> bool:
    """A ``--cache`` folder written by ``--save`` (an index directory), not a folder of class subfolders of images."""
    if not path.is_dir() or (path / "index.json").exists():
        return path.is_dir()
    from metriclearn.images.listing import is_image_file

    return not any(is_image_file(f) for sub in path.iterdir() if sub.is_dir() for f in sub.iterdir())


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def _image_options(loaded: Any, opts: dict[str, Any]) -> Any:
    """How image inputs are decoded: at ``--image-size``, else the model's recorded (C, S, S) input size, else
    automatically; with ``--workers`` and ``--skip-bad-images``."""
    from metriclearn.images import ImageOptions

    shape = tuple(loaded.input_shape or ())
    size = opts["image_size"] or (int(shape[-1]) if len(shape) == 3 and shape[0] in (1, 3) else None)
    return ImageOptions(size=size, workers=opts["workers"], skip_bad=opts["skip_bad_images"])


def _pinned(images: Any, x: Any) -> Any:
    """``images`` with the size and channels ``x`` (N, C, S, S) was decoded at, when they were left automatic:
    every file of one command then reaches the model at one geometry (an automatic size follows each file's
    first picture, so a cache of 32-pixel pictures and 28-pixel queries would meet the model at two sizes)."""
    if images.size is not None or not isinstance(x, np.ndarray) or x.ndim != 4:
        return images
    return dataclasses.replace(images, size=int(x.shape[-1]), channels=images.channels or int(x.shape[1]))


def read_inputs(path: Path, loaded: Any, flag: str, labels: str, images: Any = None) -> tuple[Any, list[Any] | None]:
    """``(inputs, label values or None)`` of a data file for ``loaded``'s kind of input; ``labels="required"``
    refuses a file without labels; ``images`` (:class:`~metriclearn.images.ImageOptions`): how image data is
    decoded."""
    from metriclearn.data import load_data

    path = Path(path)
    check_input_kind(path, loaded, flag)
    data = load_data(path, require_labels=False, images=images)
    if labels == "required" and not data.is_labeled:
        raise ValueError(f"{flag} {str(path)!r} holds no labels; the cache and tuning data need them "
                         "(.npz with X and y, .csv with a label column, .jsonl with a label per line)")
    label_values = data.label_values()
    values = None if label_values is None else label_values.tolist()
    return (data.X if isinstance(data.X, list) else _check_shape(data.X, loaded, flag, path)), values


def check_input_kind(path: Path, loaded: Any, flag: str) -> None:
    """A text model reads ``.jsonl``, an array model anything else: checked on the file name, before any work."""
    suffix = Path(path).suffix.lower()
    if loaded.text and suffix != ".jsonl":
        raise ValueError(f"{flag} {str(path)!r}: this {loaded.kind} model reads texts, give a .jsonl file "
                         f"(one {{\"text\": ..., \"label\": ...}} per line)")
    if not loaded.text and suffix == ".jsonl":
        raise ValueError(f"{flag} {str(path)!r}: this {loaded.kind} model reads arrays (.npz, .csv or .npy), "
                         "not texts")


def _check_shape(x: np.ndarray, loaded: Any, flag: str, path: Path) -> np.ndarray:
    from metriclearn.pretrained.extractor import input_width

    if loaded.input_shape:
        width, expected = math.prod(loaded.input_shape), loaded.input_shape
    else:  # a TorchScript or plain module: the width of its first weight matrix, when it starts with one
        width = input_width(loaded.model) if x.ndim == 2 else None
        expected = f"{width} features per row (its first layer's width)"
    if width is not None and math.prod(x.shape[1:]) != width:
        raise ValueError(f"{flag} {str(path)!r}: samples have shape {x.shape[1:]} but the model expects {expected}")
    return x
