"""What several commands read from their options, decided once.

- **Vectors** (:func:`vector_options`, :func:`read_vectors`): ``index build``, ``index query``, ``classify``,
  ``calibrate`` and ``report`` take ``--embeddings FILE.npy [--labels FILE.npy]`` (``--queries`` and
  ``--features``, the older names, still work); every one of them also takes ``--model DIR --data PATH``
  instead, which loads the trained run once and embeds the data on the fly (labels optional, classes the run
  never saw welcome). Exactly one source, or a usage error (exit 2).
- **Same model** (:func:`check_same_model`): an index built with ``--model`` records the model's fingerprint;
  vectors embedded by another model are refused. A ``.npy`` file carries no fingerprint, so ``--queries`` /
  ``--embeddings`` are never checked (nor is an index built from them).
- **k and dimension** (:func:`check_k`, :func:`check_dim`) against an index, with the same words everywhere.
- **Probabilities** (:func:`load_probabilities`): a ``--probs`` file checked in full, its errors naming the file.
- **--quiet** (:data:`quiet_option`): one definition for the group and every command.
- **Distinct files** (:func:`check_distinct_files`): two outputs of one command, or an output and an input, on
  one path are refused before any work (``embed --out e.npy --labels-out e.npy`` would keep only the labels).

Example
-------
>>> import numpy as np
>>> from metriclearn.indexes import EmbeddingIndex
>>> index = EmbeddingIndex(2, metric="l2", device="cpu")
>>> _ = index.add(np.eye(2, dtype=np.float32))
>>> check_k(2, index, "idx")
2
>>> check_k(3, index, "idx")
Traceback (most recent call last):
    ...
ValueError: k=3 is larger than the index idx (2 vectors)
>>> check_distinct_files([("--out", "s.npy"), ("--sets", "./s.npy")])
Traceback (most recent call last):
    ...
click.exceptions.UsageError: --sets is the same file as --out ('./s.npy'); give each output its own file
>>> check_source(None, None, "new.csv", "--embeddings")
Traceback (most recent call last):
    ...
click.exceptions.UsageError: --data PATH needs --model DIR (the trained run that embeds it)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from metriclearn._checks import check_positive_int, check_probabilities
from metriclearn._progress import set_quiet


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        set_quiet(True)
    return value


quiet_option = click.option("--quiet", "-q", is_flag=True, callback=_set_quiet,
                            help="No progress bars (nor, for train, per-epoch lines).")


def examples(*lines: str) -> str:
    """A command's ``--help`` epilog: ``Examples:`` and the command lines, kept as written (click's ``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


label_column_option = click.option("--label-column", metavar="NAME", default="label", show_default=True,
                                   help="The label column of a .csv --data (every other column is a feature).")


workers_option = click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                              help="Processes decoding image data (0: this one).")
skip_bad_images_option = click.option("--skip-bad-images", is_flag=True,
                                      help="Skip (and list) images that cannot be read, instead of stopping.")


def image_data_options(command: Any) -> Any:
    """``--workers N`` and ``--skip-bad-images``: how a command decodes image ``--data`` (one definition for
    ``embed``, ``evaluate``, ``second-opinion`` and every :func:`vector_options` command)."""
    return workers_option(skip_bad_images_option(command))


def parse_columns(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """``--keep-columns A,B`` → ``("A", "B")``; an empty name is a usage error."""
    if value is None:
        return ()
    names = tuple(name.strip() for name in value.split(","))
    if not all(names):
        raise click.BadParameter(f"expected column names separated by commas, got {value!r}")
    return names


def csv_columns(label_column: str = "label", id_column: str | None = None, keep: tuple[str, ...] = ()) -> Any:
    """The :class:`~metriclearn.data.CsvColumns` of the options, or ``None`` when they are all the defaults."""
    if (label_column, id_column, keep) == ("label", None, ()):
        return None
    from metriclearn.data import CsvColumns

    return CsvColumns(label=label_column, id=id_column, keep=keep)


@dataclass(frozen=True, eq=False)
class Vectors:
    """Vectors read from a ``.npy`` file or embedded by a trained run.

    Attributes
    ----------
    x : (n, d) float32.
    labels : (n,) label values (ints or strings), or ``None``.
    classes : the class order to show (a run's classes, then new ones), or ``None`` (sorted labels).
    origin : where they came from, for messages (``"embeddings 'e.npy'"``, ``"run 'r' on 'd.csv'"``).
    run : the :class:`~metriclearn.runs.TrainedRun` that embedded them, if any.
    embedded : the run's :class:`~metriclearn.runs.RunEmbeddings`, if any (seen / unseen classes).
    """

    x: np.ndarray
    labels: np.ndarray | None
    classes: list[Any] | None
    origin: str
    run: Any = None
    embedded: Any = None

    @property
    def fingerprint(self) -> str | None:
        """The embedding model's fingerprint; ``None`` for vectors read from a file."""
        return None if self.run is None else self.run.fingerprint


def vector_options(matrix_flag: str, matrix_help: str, labels_flag: str | None = None,
                   aliases: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """Add ``MATRIX_FLAG FILE.npy [LABELS_FLAG FILE.npy]`` and ``--model DIR --data PATH`` to a command.

    ``aliases`` are older names of ``MATRIX_FLAG`` that keep working (``--queries`` / ``--features`` for
    ``--embeddings``: one name for a ``.npy`` of embeddings on every command). The values arrive as ``matrix``,
    ``labels`` (when ``labels_flag``), ``model`` and ``data``.
    """
    options = [
        click.option(matrix_flag, *aliases, "matrix", type=click.Path(dir_okay=False, path_type=Path),
                     help=matrix_help),
        click.option("--model", type=click.Path(file_okay=False, path_type=Path),
                     help=f"A trained run directory that embeds --data (instead of {matrix_flag})."),
        click.option("--data", metavar="PATH|digits",
                     help="Data for --model to embed: .npz / .csv / .jsonl / .npy inputs or 'digits'; labels "
                          "optional, classes unseen in training welcome."),
    ]
    if labels_flag:
        options.insert(1, click.option(labels_flag, "labels", type=click.Path(dir_okay=False, path_type=Path),
                                       help=f"Labels (n,) .npy (ints or strings) for {matrix_flag}."))
        options.append(label_column_option)
    options += [workers_option, skip_bad_images_option]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def check_source(matrix: Path | None, model: Path | None, data: str | None, matrix_flag: str,
                 labels: Path | None = None, labels_flag: str | None = None) -> None:
    """Exactly one of ``MATRIX_FLAG`` and ``--model --data``, else a ``click.UsageError`` (exit 2)."""
    usage = f"{matrix_flag} FILE.npy or --model DIR --data PATH"
    if matrix is not None and (model is not None or data is not None):
        raise click.UsageError(f"give either {usage}, not both")
    if model is not None and data is None:
        raise click.UsageError("--model DIR needs --data PATH (the data to embed)")
    if data is not None and model is None:
        raise click.UsageError("--data PATH needs --model DIR (the trained run that embeds it)")
    if labels is not None and matrix is None:
        raise click.UsageError(f"{labels_flag} goes with {matrix_flag}; with --model the labels come from --data")
    if matrix is None and model is None:
        raise click.UsageError(f"give {usage}")


def read_vectors(
    matrix: Path | None,
    model: Path | None,
    data: str | None,
    *,
    matrix_flag: str,
    what: str,
    labels: Path | None = None,
    labels_flag: str | None = None,
    device: str = "auto",
    batch_size: int = 1024,
    columns: Any = None,
    workers: int = 0,
    skip_bad: bool = False,
) -> Vectors:
    """Check the source (:func:`check_source`), then read the ``.npy`` files or embed ``data`` with the run.

    ``what`` names the matrix in messages (``"embeddings"``, ``"queries"``); ``columns``
    (:class:`~metriclearn.data.CsvColumns`) names the label, id and metadata columns of a ``.csv`` ``data``;
    ``workers`` and ``skip_bad`` say how image ``data`` is decoded (:meth:`~metriclearn.runs.TrainedRun.image_options`).
    """
    check_source(matrix, model, data, matrix_flag, labels, labels_flag)
    from metriclearn.data import load_labels, load_matrix

    if matrix is not None:
        x = load_matrix(matrix, name=what)
        y = None if labels is None else load_labels(labels, n=x.shape[0])
        origin = f"{what} {str(matrix)!r}" + ("" if labels is None else f" with labels {str(labels)!r}")
        return Vectors(x, y, None, origin)
    from metriclearn.runs import load_run

    assert model is not None and data is not None
    run = load_run(model)
    if columns is not None or workers or skip_bad:  # read here, as asked; the run embeds the LabeledData
        from metriclearn.data import load_data

        source: Any = load_data(data, classes=run.classes, require_labels=False, unseen="append", columns=columns,
                                images=run.image_options(workers, skip_bad))
    else:
        source = data
    embedded = run.embed(source, batch_size=batch_size, device=device)
    classes = embedded.classes if embedded.labels is not None else None
    return Vectors(embedded.embeddings, embedded.label_values(), classes, f"run {str(model)!r} on {data!r}", run,
                   embedded)


def check_same_model(index: Any, index_dir: os.PathLike[str] | str, vectors: Vectors) -> None:
    """Refuse vectors embedded by a model other than the one that built ``index`` (when both are known)."""
    if vectors.run is not None:
        check_built_by(index.attrs.get("model_fingerprint"), index_dir, vectors.run)


def check_built_by(built_by: str | None, index_dir: os.PathLike[str] | str, run: Any) -> None:
    """Refuse an index whose recorded model fingerprint ``built_by`` is not ``run``'s (``None``: not known)."""
    if built_by is None or built_by == run.fingerprint:
        return
    raise ValueError(
        f"the index {index_dir} was built by another model (fingerprint {built_by[:12]}…) than {run.path} "
        f"({run.fingerprint[:12]}…); rebuild it with `index build --model {run.path}` or use the model that built it"
    )


def check_k(k: int, index: Any, index_dir: os.PathLike[str] | str) -> int:
    """``k`` as a positive int no larger than the index."""
    k = check_positive_int(k, "k")
    if k > len(index):
        raise ValueError(f"k={k} is larger than the index {index_dir} ({len(index)} vectors)")
    return k


def check_dim(vectors: Vectors, index: Any, index_dir: os.PathLike[str] | str) -> np.ndarray:
    """``vectors.x`` when its width is the index's dimension."""
    if vectors.x.shape[1] != index.dim:
        raise ValueError(f"{vectors.origin} has dimension {vectors.x.shape[1]} but the index {index_dir} has "
                         f"dimension {index.dim}")
    return vectors.x


def load_probabilities(path: Path, flag: str, n: int, num_classes: int | None = None) -> np.ndarray:
    """A probability matrix from ``path``: (n, K) finite, non-negative, rows summing to 1, errors naming the file."""
    from metriclearn.data import load_matrix

    name = f"{flag} file {str(path)!r}"
    return check_probabilities(load_matrix(path, flag), name, n=n, num_classes=num_classes,
                               rows="feature rows", columns="classes in the index")


def check_distinct_files(outputs: Sequence[tuple[str, Any]], inputs: Sequence[tuple[str, Any]] = ()) -> None:
    """Refuse (``click.UsageError``, exit 2) two ``(flag, path)`` outputs on one file, or an output on an input.

    Paths are compared after resolving ``.``/``..`` and symbolic links, and by inode when both exist (a hard
    link); ``None`` paths (options not given) are skipped. Outputs are written last, so without this check the
    later one silently replaces the earlier (or the user's input).
    """
    seen: list[tuple[str, Any]] = [(flag, path) for flag, path in inputs if path is not None]
    for flag, path in outputs:
        if path is None:
            continue
        for other_flag, other in seen:
            if _same_file(path, other):
                role = "output" if (other_flag, other) not in inputs else "input"
                fix = "give each output its own file" if role == "output" else f"write elsewhere, {other_flag} is read"
                raise click.UsageError(f"{flag} is the same file as {other_flag} ({str(path)!r}); {fix}")
        seen.append((flag, path))


def _same_file(a: Any, b: Any) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False
