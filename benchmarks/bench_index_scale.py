"""Scale: 1 M × 128 synthetic clustered vectors, ivf against exact search (build time, memory, recall, speed).

Data: 1 000 Gaussian clusters of uneven sizes (centres N(0, 4²·I), unit noise), 1 000 fresh queries drawn from the
same clusters; squared L2. One ivf build (nlist given, default 1 024), recall@10 on the fresh queries against
``exact_search`` for a range of nprobe, each timed side by side with the flat index (best of 2); faiss and
torch limited to 1 thread. Memory: the serialised faiss index (what ``save`` writes). With ``--tune R ...``
the nprobe curve is replaced by tuning a default ivf index (automatic nlist 4 000, so nlist candidates 2 000 /
4 000 / 8 000) to each recall, measured on the fresh queries.

Usage: python benchmarks/bench_index_scale.py [--n 1000000] [--dim 128] [--nlist 1024] [--tune 0.95 0.99]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from metriclearn.indexes import EmbeddingIndex, exact_search, tuning

K = 10


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, weights: np.ndarray) -> np.ndarray:
    pick = rng.choice(len(centres), n, p=weights)
    return (centres[pick] + rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float32)


def qps_pair(a: EmbeddingIndex, b: EmbeddingIndex, xq: np.ndarray, repeats: int = 2) -> tuple[float, float]:
    best = [float("inf")] * 2
    for _ in range(repeats):
        for j, index in enumerate((a, b)):
            start = time.perf_counter()
            index.search(xq, K)
            best[j] = min(best[j], time.perf_counter() - start)
    return len(xq) / best[0], len(xq) / best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--tune", type=float, nargs="*", help="Also tune a default ivf index to these recalls.")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = (rng.standard_normal((1000, args.dim)) * 4).astype(np.float32)
    weights = rng.integers(1, 20, 1000).astype(float)
    weights /= weights.sum()
    x = clustered(args.n, args.dim, rng, centres, weights)
    xq = clustered(1000, args.dim, rng, centres, weights)
    start = time.perf_counter()
    gt = exact_search(xq, x, K, metric="l2")[0]
    print(f"exact ground truth (torch): {time.perf_counter() - start:.0f} s", flush=True)
    flat = EmbeddingIndex(args.dim, "l2", "flat", "cpu")
    start = time.perf_counter()
    flat.add(x)
    print(f"flat: add {time.perf_counter() - start:.1f} s, {len(faiss.serialize_index(flat.faiss_index)) / 2**20:.0f} MiB", flush=True)
    ivf = EmbeddingIndex(args.dim, "l2", "ivf", "cpu", nlist=args.nlist)
    start = time.perf_counter()
    ivf.add(x)
    build = time.perf_counter() - start
    size = len(faiss.serialize_index(ivf.faiss_index)) / 2**20
    print(f"ivf nlist={args.nlist}: build (train + add) {build:.0f} s, index {size:.0f} MiB", flush=True)
    if args.tune:
        for target in args.tune:
            tuned = EmbeddingIndex(args.dim, "l2", "ivf", "cpu")
            tuned.add(x)
            start = time.perf_counter()
            report = tuned.tune(target, k=K)
            seconds = time.perf_counter() - start
            recall = tuning.recall_at_k(tuned.search(xq, K)[1], xq, x, gt, "l2")
            q_ivf, q_flat = qps_pair(tuned, flat, xq)
            print(f"tune({target}): {report['params']} in {seconds:.0f} s; tuner recall {report['recall_at_k']}, "
                  f"fresh recall {recall:.4f}, {q_ivf:.0f} vs flat {q_flat:.0f} q/s ({q_ivf / q_flat:.1f}x)", flush=True)
        return
    print("| nprobe | recall@10 | ivf q/s | flat q/s | × flat |\n|---|---|---|---|---|")
    for nprobe in (1, 2, 4, 8, 16, 32, 64):
        ivf.nprobe = nprobe
        recall = tuning.recall_at_k(ivf.search(xq, K)[1], xq, x, gt, "l2")
        q_ivf, q_flat = qps_pair(ivf, flat, xq)
        print(f"| {nprobe} | {recall:.4f} | {q_ivf:.0f} | {q_flat:.0f} | {q_ivf / q_flat:.1f} |", flush=True)
        if recall >= 0.999:
            break


if __name__ == "__main__":
    main()
