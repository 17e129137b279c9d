"""torchrun scaling on this machine: 1, 2 and 4 CPU processes, side by side in one run; plus a projection plot.

Training: ``torchrun --standalone --nproc_per_node=W $(command -v metriclearn) train`` on one synthetic
data set (uneven classes) with a fixed *global* batch, 1 thread per process, W in {1, 2, 4} visited in
turn (rotated order, ``--repeats`` rounds) so machine load hits every W alike. Reported per W: median
samples/s over the epochs after the first (from log.csv, global samples), time per step, and the run's
held-out kNN accuracy (the same model whatever W: a check, not a speed number).

Sharded search: W spawned gloo ranks (1 thread each) each hold one shard of a flat cosine index of
``--keys`` vectors (d=64, 100 classes); timed after a warm-up: ``ShardedIndex.search`` (k=10) and the exact
sharded cache softmax (θ=50) of 2000 queries, collectives included (W=1: one process, one shard).

The projection (``--plot``) is a model, not a measurement: see docs/SCALING.md for its terms and
assumptions. Nothing here measures a GPU.

Usage: python benchmarks/bench_distributed.py [--repeats 2] [--n 12000] [--json OUT] [--plot docs/scaling-projection.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WORLDS = (1, 2, 4)
SCRIPT = str(Path(sys.executable).with_name("metriclearn"))


def launch(world: int, *args: str) -> float:
    """Run the CLI on ``world`` processes (plain for 1, else torchrun); return the wall seconds."""
    prefix = [SCRIPT] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         f"--nproc_per_node={world}", SCRIPT]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    done = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"W={world} {' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def make_data(root: Path, n: int, dim: int, classes: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, classes)
    y = rng.choice(classes, size=n, p=weights / weights.sum())
    X = (rng.normal(size=(classes, dim))[y] * 1.5 + rng.normal(size=(n, dim))).astype(np.float32)
    np.savez(root / "data.npz", X=X, y=y)
    return root / "data.npz"


def train_case(root: Path, data: Path, world: int, encoder: str, tag: str, args: argparse.Namespace) -> dict[str, float]:
    out = root / f"run-{world}-{encoder.replace(':', '-').replace(',', '-')}-{tag}"
    launch(world, "train", "--data", str(data), "--encoder", encoder, "--epochs", str(args.epochs), "--batch-size", str(args.batch),
           "--samples-per-class", "4", "--device", "cpu", "--threads", "1", "--quiet", "--no-report",
           "--out", str(out))
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = int(rows[0]["step"])  # steps per epoch
    later = rows[1:] or rows
    metrics = json.loads((out / "metrics.json").read_text())
    return {"samples_per_s": statistics.median(float(r["samples_per_s"]) for r in later),
            "ms_per_step": 1000 * statistics.median(float(r["seconds"]) for r in later) / steps,
            "knn_accuracy": metrics["knn_accuracy_k5"], "steps_per_epoch": steps}


def _search_worker(rank: int, world: int, port: int, folder: str, queries: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from metriclearn.classify.sharded_cache import sharded_cache_proba
    from metriclearn.indexes.sharded import ShardedIndex
    from metriclearn.training import distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env(backend="gloo")
    try:
        index = ShardedIndex.load(folder, device="cpu")  # rank r holds shard r
        q = np.load(queries)
        index.search(q[:10], 10)  # warm-up
        times = {}
        for name, fn in (("search_s", lambda: index.search(q, 10)),
                         ("cache_s", lambda: sharded_cache_proba(index, q, theta=50.0, device="cpu"))):
            dist.barrier()
            start = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def search_case(root: Path, world: int) -> dict[str, float]:
    """In-process (spawned gloo ranks, 1 thread each): flat k=10 search and the exact sharded cache, W shards."""
    import socket

    import torch.multiprocessing as mp

    from metriclearn.indexes.sharded import ShardedIndex

    folder = root / f"index-{world}"
    if not folder.exists():
        keys, labels = np.load(root / "keys.npy"), np.load(root / "keys-labels.npy")
        ShardedIndex.build(keys, labels=labels, num_shards=world, metric="cosine", device="cpu").save(folder)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = root / f"search-{world}.json"
    mp.spawn(_search_worker, args=(world, port, str(folder), str(root / "queries.npy"), str(out)), nprocs=world)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--encoders", nargs="+", default=["mlp", "mlp:1024,1024"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"config": vars(args) | {"json": None, "plot": None}, "cpus": os.cpu_count(),
                               "train": {(e, w): [] for e in args.encoders for w in WORLDS},
                               "search": {w: [] for w in WORLDS}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root, args.n, args.dim, args.classes)
        rng = np.random.default_rng(1)
        np.save(root / "keys.npy", rng.normal(size=(args.keys, 64)).astype(np.float32))
        np.save(root / "keys-labels.npy", rng.integers(0, 100, args.keys))
        np.save(root / "queries.npy", rng.normal(size=(2000, 64)).astype(np.float32))
        for r in range(args.repeats):
            for world in WORLDS[r % len(WORLDS):] + WORLDS[: r % len(WORLDS)]:  # rotated order
                for encoder in args.encoders:
                    results["train"][encoder, world].append(train_case(root, data, world, encoder, str(r), args))
                    print(encoder, world, results["train"][encoder, world][-1], flush=True)
                results["search"][world].append(search_case(root, world))
                print(world, results["search"][world][-1], flush=True)
    def median(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(row[k] for row in rows) for k in rows[0]}

    summary: dict[str, Any] = {"train": {}, "search": {w: median(results["search"][w]) for w in WORLDS}}
    for encoder in args.encoders:
        rows = {w: median(results["train"][encoder, w]) for w in WORLDS}
        summary["train"][encoder] = rows
        print(f"\ntrain, encoder {encoder}, global batch {args.batch}")
        print(f"{'W':>2} {'samples/s':>10} {'vs W=1':>7} {'ms/step':>8} {'kNN acc':>8}")
        for world, row in rows.items():
            print(f"{world:>2} {row['samples_per_s']:>10.0f} {row['samples_per_s'] / rows[1]['samples_per_s']:>7.2f} "
                  f"{row['ms_per_step']:>8.1f} {row['knn_accuracy']:>8.4f}")
    print(f"\nsharded search and cache, {args.keys} keys, 2000 queries")
    print(f"{'W':>2} {'search s':>9} {'vs W=1':>7} {'cache s':>8} {'vs W=1':>7}")
    base = summary["search"][1]
    for world, row in summary["search"].items():
        print(f"{world:>2} {row['search_s']:>9.3f} {base['search_s'] / row['search_s']:>7.2f} {row['cache_s']:>8.3f} "
              f"{base['cache_s'] / row['cache_s']:>7.2f}")
    results["train"] = {f"{e}|{w}": v for (e, w), v in results["train"].items()}
    results["summary"] = summary
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot_projection(args.plot)


# ---------------------------------------------------------------------------- the projection (a model)
# Assumed GPU figures (not measured here: no GPU was available). H100-SXM-class card.
FLOPS = 60e12          # sustained FP32/TF32 matmul FLOP/s for the encoder and the loss GEMMs (of ~67e12 FP32 peak)
NVLINK = 300e9         # bytes/s per GPU inside a node of 8 (ring all-gather / all-reduce bus bandwidth)
NETWORK = 50e9         # bytes/s per GPU across nodes (one 400 Gb/s InfiniBand NIC per GPU, DGX H100-class)
LATENCY = 10e-6        # seconds per ring hop


def step_seconds(world: int, batch: int = 4096, dim: int = 128, params: float = 25e6,
                 flops_per_sample: float = 6 * 25e6) -> dict[str, float]:
    """One training step of a ``params``-parameter encoder on a global batch, data-parallel over ``world`` GPUs.

    * encoder forward+backward: ``flops_per_sample · batch / world`` (shrinks with W);
    * loss on the gathered batch (neighbourhood softmax): ``~6 · batch² · dim`` FLOPs on *every* rank
      (the B×B distance matrix forward and backward — does not shrink with W);
    * all-gather of the embeddings, and the all-reduce of their gradient: ``2 · batch · dim · 4`` bytes;
    * DDP's gradient all-reduce: ``2 · (W−1)/W · params · 4`` bytes (ring), the bandwidth of NVLink inside a
      node (W ≤ 8) and of the network across nodes.
    """
    bandwidth = NVLINK if world <= 8 else NETWORK
    encoder = flops_per_sample * batch / world / FLOPS
    loss = 6 * batch**2 * dim / FLOPS
    ring = (world - 1) / world if world > 1 else 0.0
    gather = 2 * batch * dim * 4 * ring / bandwidth + 2 * (world - 1) * LATENCY * (world > 1)
    grads = 2 * ring * params * 4 / bandwidth + 2 * (world - 1) * LATENCY * (world > 1)
    return {"encoder": encoder, "loss": loss, "embedding all-gather": gather,
            "gradient all-reduce (not overlapped)": grads}


def plot_projection(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metriclearn.reports.plots import save_png

    worlds = [1, 2, 4, 8, 16, 32, 64]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for batch, style in ((4096, "-"), (16384, "--")):
        parts = [step_seconds(w, batch=batch) for w in worlds]
        totals = [sum(p.values()) for p in parts]
        axes[0].plot(worlds, [batch / t for t in totals], style, marker="o", label=f"global batch {batch}")
        axes[0].plot(worlds, [batch / totals[0] * w for w in worlds], ":", color="grey", linewidth=0.8)
        if batch == 4096:
            bottom = np.zeros(len(worlds))
            for name in parts[0]:
                values = np.array([p[name] for p in parts]) * 1e3
                axes[1].bar([str(w) for w in worlds], values, bottom=bottom, label=name)
                bottom += values
    axes[0].set(xscale="log", yscale="log", xlabel="GPUs (data-parallel)", ylabel="samples / s",
                title="PROJECTION: throughput (dotted: linear)")
    axes[0].set_xticks(worlds, [str(w) for w in worlds])
    axes[0].legend()
    axes[1].set(xlabel="GPUs", ylabel="ms per step", title="PROJECTION: where a step goes (batch 4096)")
    axes[1].legend(fontsize=8)
    fig.suptitle("PROJECTION from a cost model (docs/SCALING.md), assumed H100-class figures; encoder 25M params, "
                 "D=128 — not measured (no GPU here)",
                 fontsize=10, color="darkred")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
