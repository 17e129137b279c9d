"""Index to a target recall, PQ: the re-ranking depth (``k_factor``) that ``tune`` chooses, on real text embeddings.

Same data and fresh queries as ``bench_index_tuning.py`` (all-MiniLM-L6-v2 over WordNet definitions, cosine,
``--n`` indexed, ``--fresh`` never indexed, plus the 5 000 of the extra sample unless ``--no-extra-fresh``). A ``pq`` index with ``--pq-m`` sub-quantizers of 8 bits (16-byte
codes by default: 96× smaller than the 384-d float vectors) is tuned with ``vectors=`` for each target; the
tuner tries no re-ranking and k_factor ∈ {2, 4, 8, 16, 32}, each with its nprobe sweep. Printed per target:
the chosen parameters, the tuner's held-out recall, the best recall without re-ranking (its sweep's top),
the recall@10 on the fresh queries, and queries/s against flat timed in turn (best of 3, 1 thread).

Usage: python benchmarks/bench_index_tuning_pq.py [--n 50000] [--fresh 1000] [--no-extra-fresh] [--pq-m 16]
       [--targets 0.9 0.95]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from metriclearn.indexes import EmbeddingIndex, TuningWarning

sys.path.insert(0, str(Path(__file__).parent))
from bench_index_tuning import K, fresh_recall, side_by_side, split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--fresh", type=int, default=1000)
    parser.add_argument("--pq-m", type=int, default=16)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--extra-fresh", action=argparse.BooleanOptionalAction, default=True,
                        help="also use the 5 000 definitions of the extra sample as fresh queries")
    args = parser.parse_args()
    x, xq, gt, flat = split(args.n, args.fresh, args.extra_fresh)
    print(f"{len(xq)} fresh queries")
    print("| target | tuned params | tuner's recall ± SE (held-out) | best without re-ranking (held-out) | fresh recall@10 "
          "| × flat | tune s | notes |")
    for target in args.targets:
        index = EmbeddingIndex(x.shape[1], "cosine", "pq", "cpu", pq_m=args.pq_m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PQ training-size advice
            index.add(x)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TuningWarning)
            report = index.tune(target, k=K, vectors=x)
        tune_s = time.perf_counter() - start
        plain = max(t["recall"] for t in report["tried"] if "k_factor" not in t)
        qps, flat_qps = side_by_side([index, flat], xq)
        notes = "; ".join(str(w.message) for w in caught if issubclass(w.category, TuningWarning)) or "—"
        print(f"| {target} | {report['params']} | {report['recall_at_k']:.4f} ± {report['recall_se']:.4f} | {plain:.4f} | "
              f"{fresh_recall(index, xq, x, gt):.4f} | {qps / flat_qps:.2f} | {tune_s:.0f} | {notes} |", flush=True)


if __name__ == "__main__":
    main()
