"""Side-by-side timing and peak memory of retrieval_metrics vs pytorch-metric-learning's AccuracyCalculator.

Each (implementation, size) runs in its own subprocess so peak RSS is that run's alone. Both compute
precision@1, R-precision and MAP@R leave-one-out on the same clustered random embeddings (AccuracyCalculator
with faiss IndexFlatL2 and k="max_bin_count"; it must hold the (N, max R) neighbour table at once).

    python benchmarks/bench_metrics.py --sizes 5000 20000 --dim 64 --classes 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def data(n: int, dim: int, classes: int, seed: int = 0) -> tuple:
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, dim)) * 0.6
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def run_one(impl: str, n: int, dim: int, classes: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    x, y = data(n, dim, classes)
    if impl == "metriclearn":
        from metriclearn.metrics import retrieval_metrics

        def call() -> dict:
            return retrieval_metrics(x, y)

    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )

        def call() -> dict:
            return calc.get_accuracy(x, y)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p1 = out["precision_at_1"]
    return {"seconds": statistics.median(times), "peak_mib": peak / 1024, "extra_mib": (peak - base) / 1024, "p1": p1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, n = args.child
        print(json.dumps(run_one(impl, int(n), args.dim, args.classes, args.repeats, args.threads)))
        return
    print(f"D={args.dim}, {args.classes} classes, {args.threads} thread(s), median of {args.repeats}")
    print("| N | metriclearn s | PML s | PML / metriclearn | metriclearn extra MiB | PML extra MiB |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        res = {}
        for impl in ("metriclearn", "pml"):
            cmd = [sys.executable, __file__, "--child", impl, str(n), "--dim", str(args.dim),
                   "--classes", str(args.classes), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            res[impl] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        assert abs(res["metriclearn"]["p1"] - res["pml"]["p1"]) < 1e-9, res
        ml, pml = res["metriclearn"], res["pml"]
        print(f"| {n} | {ml['seconds']:.2f} | {pml['seconds']:.2f} | {pml['seconds'] / ml['seconds']:.2f} "
              f"| {ml['extra_mib']:.0f} | {pml['extra_mib']:.0f} |")


if __name__ == "__main__":
    main()
