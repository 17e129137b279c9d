"""Watch the centroids move: per-epoch snapshots of a fixed validation sample, as a GIF and a PNG strip.

The trainer calls :meth:`CentroidMovie.add` once per epoch with the embeddings of the *same* validation
points; :meth:`CentroidMovie.save` writes ``centroids.gif`` (one frame per snapshot, matplotlib's
animation machinery with the Pillow writer) and ``centroids.png`` (at most ``max_panels`` snapshots,
evenly spaced, first and last included).

Design choices, so that motion in the pictures is motion of the embedding:

* **One PCA, fitted once**, on every point of the *first* snapshot, then reused for every later epoch.
  A projection refitted per epoch (or t-SNE/UMAP) would rotate, flip and rescale from frame to frame.
  The price: if the first snapshot is taken at a random initialisation, its top-2 principal axes may not be
  the directions the classes later separate along; snapshot after the first epoch when that matters.
* **Class centroids in the embedding space**, the mean of all the snapshot's points of a class, mapped
  with the same PCA (PCA is affine, so this is also the mean of the projected points); their paths so
  far are drawn as trails.
* **Fixed axis limits**: the box bounding every frame, so nothing jumps when the cloud shrinks or moves.
* A stratified sample of at most ``sample_size`` points (chosen once) is drawn, to keep the GIF small.

Example
-------
>>> import numpy as np, tempfile
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 20)
>>> movie = CentroidMovie(classes=["a", "b", "c"], sample_size=30)
>>> for epoch in range(3):  # classes drift apart epoch by epoch
...     movie.add(epoch, rng.normal(size=(60, 8)) + (epoch + 1) * np.eye(8)[y], y)
>>> paths = movie.save(tempfile.mkdtemp())
>>> sorted(paths), len(movie)
(['gif', 'png'], 3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from metriclearn._atomic import atomic_path
from metriclearn._checks import check_labels, check_matrix, check_positive_int
from metriclearn.data import stratified_subsample
from metriclearn.reports.plots import as_codes, class_centroids, class_colors, draw_classes, save_png

MAX_LABELLED_CLASSES = 20  # more centroid labels than this overlap in a small panel


class _GifWriter(PillowWriter):
    """``PillowWriter`` that names the format, so the (atomic, temporary) file name needs no .gif suffix."""

    def finish(self) -> None:
        frames = self._frames  # type: ignore[attr-defined]  # PillowWriter's own list, made in setup()
        frames[0].save(self.outfile, format="GIF", save_all=True, append_images=frames[1:],
                       duration=int(1000 / self.fps), loop=0)


class CentroidMovie:
    """Collects per-epoch 2-D snapshots of a fixed sample and the class centroids; saves a GIF and a strip.

    Parameters
    ----------
    classes : class names; labels passed to :meth:`add` are then int codes into it. None: the distinct
        labels of the first snapshot, sorted.
    sample_size : at most this many points are drawn (stratified by class, chosen on the first snapshot).
    max_panels : at most this many snapshots in the PNG strip, evenly spaced.
    seed : seeds the sample and the PCA.
    fps : GIF frames per second.
    """

    def __init__(
        self,
        classes: Sequence[Any] | None = None,
        sample_size: int = 300,
        max_panels: int = 8,
        seed: int = 0,
        fps: float = 2.0,
    ) -> None:
        self.classes = None if classes is None else list(classes)
        self.sample_size = check_positive_int(sample_size, "sample_size")
        self.max_panels = check_positive_int(max_panels, "max_panels")
        self.seed = int(seed)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.fps = float(fps)
        self.epochs: list[int] = []
        self._points: list[np.ndarray] = []  # per snapshot: (m, 2) projected sample
        self._centroids: list[np.ndarray] = []  # per snapshot: (K, 2) projected class centroids
        self._labels: np.ndarray | None = None  # labels of the first snapshot (every later one must match)
        self._codes: np.ndarray | None = None  # (n,) int codes into self.classes
        self._sample: np.ndarray | None = None  # (m,) rows drawn
        self._axes: tuple[np.ndarray, np.ndarray] | None = None  # the first snapshot's PCA: mean (D,), axes (c, D)

    def __len__(self) -> int:
        return len(self.epochs)

    def add(self, epoch: int, embeddings: Any, labels: Any) -> None:
        """Snapshot ``embeddings`` (n, D) of the fixed validation points with ``labels`` (n,) at ``epoch``."""
        x = check_matrix(embeddings, "embeddings")
        labels = check_labels(labels, "labels", n=len(x))
        if self._axes is None:
            self._start(x, labels)
        else:
            self._check_same_points(x, labels)
        points = self._project(x)  # (n, 2)
        assert self._codes is not None and self.classes is not None  # set by the first snapshot
        centroids = self._project(class_centroids(x, self._codes, len(self.classes)))  # (K, 2)
        self.epochs.append(int(epoch))
        self._points.append(points[self._sample])
        self._centroids.append(centroids)

    def _start(self, x: np.ndarray, labels: np.ndarray) -> None:
        codes, self.classes = as_codes(labels, self.classes)
        self._labels, self._codes = labels.copy(), codes
        self._sample = stratified_subsample(codes, self.sample_size, self.seed)
        pca = PCA(n_components=min(2, x.shape[1], len(x)), random_state=self.seed).fit(x)
        self._axes = (pca.mean_, pca.components_)

    def _check_same_points(self, x: np.ndarray, labels: np.ndarray) -> None:
        assert self._labels is not None and self._axes is not None
        if x.shape[1] != self._axes[0].shape[0]:
            raise ValueError(f"embeddings have dimension {x.shape[1]}, the first snapshot had "
                             f"{self._axes[0].shape[0]}")
        if len(labels) != len(self._labels) or not np.array_equal(labels, self._labels):
            raise ValueError(f"labels differ from the first snapshot's ({len(labels)} vs {len(self._labels)} "
                             "points): add() needs the same validation points in the same order every epoch")

    def _project(self, x: np.ndarray) -> np.ndarray:
        """PCA to 2-D with the fitted axes, padded with zeros when fewer than 2 components exist."""
        assert self._axes is not None
        mean, components = self._axes
        z = (x - mean) @ components.T  # (n, <=2)
        return np.pad(z, ((0, 0), (0, 2 - z.shape[1]))).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Everything collected so far, as lists and numbers (``torch.load(weights_only=True)`` reads it back).

        A resumed training run restores it, so the movie holds every epoch and keeps the first one's PCA.
        """
        if self._axes is None:
            return {}
        assert self._labels is not None and self.classes is not None
        return {  # the codes and the sample follow from classes, labels, sample_size and seed
            "classes": [c.item() if isinstance(c, np.generic) else c for c in self.classes],
            "epochs": list(self.epochs),
            "points": [p.tolist() for p in self._points],
            "centroids": [c.tolist() for c in self._centroids],
            "labels": self._labels.tolist(),
            "mean": self._axes[0].tolist(),
            "components": self._axes[1].tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a movie made with the same arguments (an empty dict: nothing yet)."""
        if not state:
            return
        self.epochs = [int(e) for e in state["epochs"]]
        self._points = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in state["points"]]
        self._centroids = [np.asarray(c, dtype=np.float32).reshape(-1, 2) for c in state["centroids"]]
        self._labels = np.asarray(state["labels"])
        self._codes, self.classes = as_codes(self._labels, self.classes)  # as the first snapshot made them
        if list(self.classes) != list(state["classes"]):
            raise ValueError(f"the saved movie has classes {state['classes']!r}, this one {self.classes!r}")
        self._sample = stratified_subsample(self._codes, self.sample_size, self.seed)
        self._axes = (np.asarray(state["mean"], dtype=np.float64), np.asarray(state["components"], dtype=np.float64))

    def limits(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Fixed ``(xlim, ylim)`` that contain every frame's points and centroids, with a 5 % margin."""
        every = np.concatenate(self._points + [c[~np.isnan(c[:, 0])] for c in self._centroids])
        low, high = every.min(axis=0), every.max(axis=0)
        pad = 0.05 * np.maximum(high - low, 1e-6)
        return (float(low[0] - pad[0]), float(high[0] + pad[0])), (float(low[1] - pad[1]), float(high[1] + pad[1]))

    def draw(self, ax: Axes, frame: int, small: bool = False) -> None:
        """Draw snapshot ``frame`` on ``ax``: sample points, centroid trails so far, centroids, fixed limits."""
        assert self._codes is not None and self._sample is not None and self.classes is not None
        names = [str(c) for c in self.classes]
        colors = class_colors(len(names))
        trails = np.stack(self._centroids[: frame + 1])  # (frame + 1, K, 2)
        for c in range(len(names)):
            ax.plot(trails[:, c, 0], trails[:, c, 1], color=colors[c], linewidth=1.5, alpha=0.9, zorder=2)
        draw_classes(ax, self._points[frame], self._codes[self._sample], names, colors,
                     size=6.0 if small else 10.0, centroid_size=70.0 if small else 200.0,
                     label_centroids=len(names) <= (10 if small else MAX_LABELLED_CLASSES),
                     centroids=self._centroids[frame])
        xlim, ylim = self.limits()
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_color("0.85")
        ax.set_title(f"epoch {self.epochs[frame]}", fontsize=10 if small else 12)

    def save(self, out_dir: str | os.PathLike[str], name: str = "centroids") -> dict[str, Path]:
        """Write ``<name>.gif`` (every snapshot) and ``<name>.png`` (the strip) to ``out_dir``; return both paths."""
        if not self.epochs:
            raise ValueError("CentroidMovie has no snapshots: call add() at least once before save()")
        out = Path(out_dir)
        paths = {"gif": out / f"{name}.gif", "png": out / f"{name}.png"}
        self._save_gif(paths["gif"])
        self._save_strip(paths["png"])
        return paths

    def _save_gif(self, path: Path) -> None:
        fig = Figure(figsize=(5.0, 5.0), dpi=80, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()

        def update(frame: int) -> list[Any]:
            ax.clear()
            self.draw(ax, frame)
            return []

        animation = FuncAnimation(fig, update, frames=len(self), blit=False, repeat=False)
        with atomic_path(path) as tmp:
            # matplotlib's stubs say int; the writer takes any positive rate
            animation.save(tmp, writer=_GifWriter(fps=self.fps))  # type: ignore[arg-type]

    def panel_frames(self) -> list[int]:
        """Indices of the snapshots in the strip: at most ``max_panels``, evenly spaced, first and last kept.

        >>> movie = CentroidMovie(max_panels=4)
        >>> movie.epochs = list(range(10))
        >>> movie.panel_frames()
        [0, 3, 6, 9]
        """
        count = min(self.max_panels, len(self))
        return sorted({round(float(i)) for i in np.linspace(0, len(self) - 1, count)})

    def _save_strip(self, path: Path) -> None:
        frames = self.panel_frames()
        ncols = min(4, len(frames))
        nrows = -(-len(frames) // ncols)
        fig = Figure(figsize=(3.0 * ncols, 3.0 * nrows + 0.3), dpi=90, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, frame in zip(axes, frames, strict=False):
            self.draw(ax, frame, small=True)
        for ax in axes[len(frames):]:
            ax.set_axis_off()
        fig.suptitle("class centroids during training (fixed PCA of the first snapshot)", fontsize=11)
        save_png(fig, path)
