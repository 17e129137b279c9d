"""CLI start-up time: ``metriclearn --help``, ``metriclearn COMMAND --help``, each command's own imports, and whole
commands on tiny ``.npy`` files.

Every measurement is a fresh ``python`` subprocess (nothing cached in the interpreter; the OS file cache is
warm after the first run, as it is for a user typing commands), repeated ``--repeats`` times; the median wall
time is reported, with the heavy libraries the call imported.

- **help**: ``main([... "--help"])``.
- **imports**: what the command's code imports before it reads any input (its module, then the modules its
  first lines import): the fixed price of running the command.
- **run**: the whole command (``python -m metriclearn ...``) on tiny ``.npy`` files made in a temporary folder
  (72 vectors of dimension 8): index build / query / info, calibrate and classify. On data this small the
  work itself takes milliseconds, so the time is the command's start-up.
- **references**, timed in the same run, before and after the calls (the mean of the two medians):
  ``python -c pass``, ``import faiss``, ``import sklearn.base`` and ``import torch``: under load, a command's
  time is best read as a share of these.

``--before DIR`` also times every call with ``DIR`` (another checkout of the package, e.g. a ``git worktree``
of the commit before a change) first on ``PYTHONPATH``, in turn with this one inside each repeat, so load on a
shared machine hits both alike; the tables then show before, after and their ratio.

    python benchmarks/bench_startup.py --repeats 7
    git worktree add /tmp/before HEAD~3 && python benchmarks/bench_startup.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "faiss", "sklearn", "scipy", "umap", "matplotlib", "transformers", "tqdm")

HELP = [[], ["train"], ["embed"], ["evaluate"], ["index", "build"], ["index", "query"], ["index", "info"],
        ["calibrate"], ["classify"], ["second-opinion"], ["report"]]

# what each command imports before reading its inputs (see the first lines of each command's function)
IMPORTS = {
    "train": ["metriclearn.training.run", "metriclearn.training.resume"],
    "embed": ["metriclearn.training", "metriclearn.data", "metriclearn.training.run"],
    "evaluate": ["metriclearn.training.run", "metriclearn.data"],
    "report": ["metriclearn.reports.report", "metriclearn.data"],
}

# whole commands on the tiny .npy files of _make_files (run in that folder, in this order)
RUNS = {
    "index build --embeddings": ["index", "build", "--embeddings", "emb.npy", "--labels", "labels.npy", "--out",
                                 "idx", "--overwrite"],
    "index query --embeddings": ["index", "query", "--index", "idx", "--embeddings", "q.npy", "-k", "5"],
    "index info": ["index", "info", "--index", "idx"],
    "calibrate --method knn": ["calibrate", "--index", "idx", "--embeddings", "cal.npy", "--labels", "cal_labels.npy",
                               "--method", "knn"],
    "classify --method knn": ["classify", "--index", "idx", "--embeddings", "q.npy", "--method", "knn", "--out",
                              "pred.npy"],
    "classify --method cache": ["classify", "--index", "idx", "--embeddings", "q.npy", "--method", "cache", "--out",
                                "pred.npy"],
}

REFERENCES = {"python -c pass": "pass", "import faiss": "import faiss", "import sklearn.base": "import sklearn.base",
              "import torch": "import torch"}

_HELP_SCRIPT = """
import sys
from metriclearn.cli import main
try:
    main({args!r} + ["--help"])
except SystemExit:
    pass
print("HEAVY", [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""

_IMPORT_SCRIPT = """
import importlib, sys
from metriclearn.cli import cli
cli.get_command(None, {command!r})
for name in {modules!r}:
    importlib.import_module(name)
print("HEAVY", [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""

_RUN_SCRIPT = """
import atexit, sys
atexit.register(lambda: print("HEAVY", [m for m in {heavy!r} if m in sys.modules], file=sys.stderr))
from metriclearn.cli import main
main({args!r})
"""


def _make_files(folder: Path) -> None:
    """Uneven classes (40, 23, 9 rows), held-out calibration rows and queries, dimension 8."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (3, 8))

    def rows(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.array(["ant", "bee", "cat"]), counts)
        return (centres[np.searchsorted(["ant", "bee", "cat"], y)] + rng.normal(size=(len(y), 8))).astype(
            np.float32), y

    for name, counts in (("emb", [40, 23, 9]), ("cal", [31, 17, 12]), ("q", [7, 5, 3])):
        x, y = rows(counts)
        np.save(folder / f"{name}.npy", x)
        np.save(folder / ("labels.npy" if name == "emb" else f"{name}_labels.npy"), y)


def _env(root: Path) -> dict[str, str]:
    """The environment with ``root`` (a checkout of the package) first on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def _once(code: str, env: dict[str, str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed:\n{done.stderr[-2000:]}")
    heavy = [line[6:] for line in done.stderr.splitlines() if line.startswith("HEAVY")]
    return seconds, heavy[-1] if heavy else ""


def timed(code: str, repeats: int, roots: list[Path], cwd: Path) -> list[tuple[float, str]]:
    """Per root: median wall seconds of ``python -c code`` over ``repeats`` fresh processes, and the heavy modules
    seen. The roots take turns inside each repeat."""
    times: list[list[float]] = [[] for _ in roots]
    heavy = ["" for _ in roots]
    for _ in range(repeats):
        for i, root in enumerate(roots):
            seconds, heavy[i] = _once(code, _env(root), cwd)
            times[i].append(seconds)
    return [(statistics.median(t), h) for t, h in zip(times, heavy, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", type=Path, help="Another checkout of the package, timed in turn with this one.")
    args = parser.parse_args()
    roots = [HERE] if args.before is None else [args.before.resolve(), HERE]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _make_files(folder)
        first = {name: timed(code, args.repeats, [HERE], folder)[0][0] for name, code in REFERENCES.items()}
        calls = [(f"metriclearn {' '.join([*c, '--help'])}", _HELP_SCRIPT.format(args=c, heavy=HEAVY)) for c in HELP]
        calls += [(f"{c}: imports", _IMPORT_SCRIPT.format(command=c.split()[0], modules=m, heavy=HEAVY))
                  for c, m in IMPORTS.items()]
        calls += [(f"{c}: run", _RUN_SCRIPT.format(args=a, heavy=HEAVY)) for c, a in RUNS.items()]
        for name, code in calls:
            results = timed(code, args.repeats, roots, folder)
            row: dict[str, object] = {"call": name, "seconds": round(results[-1][0], 3), "heavy": results[-1][1]}
            text = f"{name:<40} {results[-1][0]:6.3f} s  {results[-1][1]}"
            if len(results) == 2:
                row.update(before=round(results[0][0], 3), heavy_before=results[0][1])
                text += f"   (before {results[0][0]:6.3f} s  {results[0][1]})"
            rows.append(row)
            print(text)
        # the references again after the calls (load changes while they run): the mean of both medians
        references = {name: round((first[name] + timed(code, args.repeats, [HERE], folder)[0][0]) / 2, 3)
                      for name, code in REFERENCES.items()}
    for name, seconds in references.items():
        print(f"{name:<40} {seconds:6.3f} s  (mean of the medians before and after the calls; before: {first[name]:.3f} s)")
    print(json.dumps({"repeats": args.repeats, "references": references, "rows": rows}))


if __name__ == "__main__":
    main()
