"""Exact cache classifier vs this machine's SGEMM rate, side by side in one run.

The exact cache model must compute every query-key similarity, i.e. one (Q×d)·(d×N) GEMM = 2·Q·N·d FLOPs,
plus exp and per-class sums. Target: ≥ 0.7× the SGEMM rate of ``torch.mm`` on the same shapes
(Q=10k, N=100k, d=128). GEMM and cache runs alternate; the ratio is reported as the median over
back-to-back (GEMM, cache) pairs (each pair sees about the same load on a shared machine) and as best
time / best time.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_cache_classifier.py [--queries 10000 --keys 100000
--dim 128 --classes 10 --repeats 3 --threads N --inline --sweep --json out.json]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from metriclearn._atomic import write_json
from metriclearn._progress import set_quiet
from metriclearn.classify import cache_probabilities


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_exact(q: torch.Tensor, k: torch.Tensor, y: torch.Tensor, classes: int, theta: float) -> float:
    """Largest |p − p_naive| on 256 queries against a float64 dense softmax."""
    got = cache_probabilities(q[:256], k, y, classes, theta)
    sims = q[:256].double() @ k.double().T  # (256, N)
    naive = torch.softmax(theta * sims, dim=1) @ F.one_hot(y, classes).double()  # (256, K)
    return float((got - naive).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--theta", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--query-block", type=int, default=512)
    parser.add_argument("--key-block", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core allowed)")
    parser.add_argument("--inline", action="store_true", help="also time workers=1 (torch intra-op threads)")
    parser.add_argument("--sweep", action="store_true", help="also time other block sizes (one run each)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    set_quiet(True)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=1)  # (Q, d)
    k = F.normalize(torch.randn(args.keys, args.dim, generator=gen), dim=1)  # (N, d)
    y = torch.randint(0, args.classes, (args.keys,), generator=gen)  # (N,)
    flops = 2.0 * args.queries * args.keys * args.dim

    out = torch.empty(args.queries, args.keys)  # (Q, N) the full similarity matrix for the SGEMM reference

    def gemm() -> None:
        torch.mm(q, k.T, out=out)

    def cache() -> None:
        cache_probabilities(q, k, y, args.classes, args.theta, args.query_block, args.key_block)

    gemm(), cache()  # warm-up
    gemm_times, cache_times = [], []
    for _ in range(args.repeats):
        gemm_times.append(timed(gemm))
        cache_times.append(timed(cache))
    del out
    ratios = [g / c for g, c in zip(gemm_times, cache_times)]
    result = {
        "shape": {"Q": args.queries, "N": args.keys, "d": args.dim, "K": args.classes},
        "threads": threads,
        "theta": args.theta,
        "blocks": [args.query_block, args.key_block],
        "sgemm_gflops": flops / min(gemm_times) / 1e9,
        "cache_gflops": flops / min(cache_times) / 1e9,
        "cache_seconds": min(cache_times),
        "ratio_best": min(gemm_times) / min(cache_times),
        "ratio_median": statistics.median(ratios),
        "max_abs_error_vs_float64": check_exact(q, k, y, args.classes, args.theta),
    }
    print(
        f"Q={args.queries} N={args.keys} d={args.dim} K={args.classes} threads={threads}: "
        f"SGEMM {result['sgemm_gflops']:.0f} GFLOP/s, exact cache {result['cache_gflops']:.0f} GFLOP/s "
        f"({result['cache_seconds']:.2f} s); cache/SGEMM ratio: median of {args.repeats} back-to-back pairs "
        f"{result['ratio_median']:.2f}, best/best {result['ratio_best']:.2f}; max |p - p_float64| = "
        f"{result['max_abs_error_vs_float64']:.1e}"
    )
    if args.inline:
        inline = [timed(lambda: cache_probabilities(q, k, y, args.classes, args.theta, workers=1))
                  for _ in range(args.repeats)]
        result["cache_inline_gflops"] = flops / min(inline) / 1e9
        print(f"  workers=1 (one thread of blocks, torch intra-op parallel ops): "
              f"{result['cache_inline_gflops']:.0f} GFLOP/s -> ratio {min(gemm_times) / min(inline):.2f}")
    if args.sweep:
        result["sweep"] = []
        for qb, kb in [(256, 2048), (512, 1024), (512, 4096), (1024, 1024), (1024, 2048), (2048, 512)]:
            seconds = timed(lambda: cache_probabilities(q, k, y, args.classes, args.theta, qb, kb))
            result["sweep"].append({"blocks": [qb, kb], "gflops": flops / seconds / 1e9})
            print(f"  blocks ({qb}, {kb}): {flops / seconds / 1e9:.0f} GFLOP/s")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
