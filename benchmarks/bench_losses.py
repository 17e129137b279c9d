"""Forward+backward time of metriclearn's losses, side by side with pytorch-metric-learning (pml).

Run from the repository root (numbers go to stdout as Markdown tables; ``--json`` also saves them)::

    python benchmarks/bench_losses.py               # full run, ~3-5 minutes on 2 cores
    python benchmarks/bench_losses.py --quick       # fewer sizes and repeats

Protocol: L2-normalised embeddings (D=128, 64 classes), one forward + ``backward()`` per call.
Contenders of one case run interleaved (A, B, A, B, ... with the order rotated every round) so
that load from other processes hits all of them alike; each reported time is the median of many
calls after warm-up (the minimum, the least disturbed call, in brackets), and the speed-up is the
ratio of the medians (of the minima in brackets). Cache losses are timed in their
steady state (the memory already full), including the enqueue each call does.

The floor of a case is its arithmetic at nominal rates for this machine (SGEMM 200 GFLOP/s,
exp 3.5 Gelem/s; the rates measured during the run are printed too): a forward GEMM of 2·B·N·D
flops, backward GEMMs of 2·B·N·D (anchor side) + 2·B·B·D (batch columns), and B·N exponentials,
for a batch of B scored against N = B (+ cache slots) columns.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from metriclearn.losses import CacheLoss, NeighborhoodSoftmaxLoss  # noqa: E402

D, CLASSES = 128, 64
GEMM_RATE, EXP_RATE = 200e9, 3.5e9  # nominal SGEMM flop/s and exp/s on the 2-core reference machine


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each contender (``repeats`` calls each), run round-robin with a rotating order."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def batch(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, D, generator=g), dim=1).requires_grad_(True)  # (B, D)
    return x, torch.randint(0, CLASSES, (b,), generator=g)


def step(loss: Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        loss(x, labels).backward()

    return run


def cycling(
    loss: Callable[..., torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor]], ids: bool = False
) -> Callable[[], None]:
    """A cache-loss step that feeds a different batch every call (so the cache keeps changing).

    With ``ids`` the batches pass their sample ids (the same ids come back every len(batches)
    steps, as in an epoch loop), so every anchor has stale copies to exclude once the cache is full.
    """
    state = {"k": 0}

    def run() -> None:
        k = state["k"] % len(batches)
        x, labels = batches[k]
        state["k"] += 1
        x.grad = None
        if ids:
            loss(x, labels, ids=torch.arange(k * len(x), (k + 1) * len(x))).backward()
        else:
            loss(x, labels).backward()

    return run


def floor_seconds(b: int, n: int) -> float:
    flops = 2 * b * n * D + 2 * b * n * D + 2 * b * b * D
    return flops / GEMM_RATE + b * n / EXP_RATE


def measured_rates() -> tuple[float, float]:
    a, c = torch.randn(2048, D), torch.randn(2048, 2048)
    t = interleaved({"gemm": lambda: torch.mm(a, a.T), "exp": lambda: torch.exp(c)}, repeats=15)
    return 2 * 2048 * 2048 * D / statistics.median(t["gemm"]), c.numel() / statistics.median(t["exp"])


def row(case: str, ours: list[float], theirs: list[float] | None, floor: float | None) -> dict[str, object]:
    """One result: medians (what the speed-ups use) and minima (the least disturbed call) in ms."""
    med, best = statistics.median(ours), min(ours)
    result: dict[str, object] = {"case": case, "calls": len(ours), "metriclearn_ms": round(med * 1e3, 3)}
    result["metriclearn_min_ms"] = round(best * 1e3, 3)
    if theirs is not None:
        result["pml_ms"] = round(statistics.median(theirs) * 1e3, 3)
        result["pml_min_ms"] = round(min(theirs) * 1e3, 3)
        result["speedup"] = round(statistics.median(theirs) / med, 2)
        result["speedup_min"] = round(min(theirs) / best, 2)
    if floor is not None:
        result["floor_ms"] = round(floor * 1e3, 3)
        result["floor_fraction"] = round(floor / med, 2)
    return result


def bench_neighborhood(sizes: list[int], repeats: int) -> list[dict[str, object]]:
    from pytorch_metric_learning.losses import NCALoss

    rows = []
    for b in sizes:
        x, labels = batch(b)
        ours, pml = NeighborhoodSoftmaxLoss(), NCALoss()
        reps = max(10, repeats * 512 // b)
        t = interleaved({"ours": step(ours, x, labels), "pml": step(pml, x, labels)}, reps)
        rows.append(row(f"NeighborhoodSoftmaxLoss vs NCALoss, B={b}", t["ours"], t["pml"], floor_seconds(b, b)))
        print_row(rows[-1])
    return rows


def bench_cache(slots: list[int], repeats: int, b: int = 512) -> list[dict[str, object]]:
    from pytorch_metric_learning.losses import CrossBatchMemory, NCALoss

    rows = []
    batches = [batch(b, seed) for seed in range(4)]
    for size in slots:
        ours = CacheLoss(D, size=size, temperature=1.0, distance="sqeuclidean")  # pml's NCALoss setting
        pml = CrossBatchMemory(NCALoss(), embedding_size=D, memory_size=size)
        with_ids = CacheLoss(D, size=size, temperature=1.0, distance="sqeuclidean")
        contenders = {
            "ours": cycling(ours, batches),
            "pml": cycling(pml, batches),
            "ids": cycling(with_ids, batches, ids=True),
        }
        for _ in range(size // b + 1):  # fill both memories
            for run in contenders.values():
                run()
        reps = max(10, repeats * 4096 // (size + b) // 2)
        t = interleaved(contenders, reps)
        floor = floor_seconds(b, b + size)
        rows.append(row(f"CacheLoss vs CrossBatchMemory(NCALoss), B={b}, {size} slots", t["ours"], t["pml"], floor))
        rows.append(row(f"CacheLoss with ids= (stale-copy exclusion), B={b}, {size} slots", t["ids"], t["pml"], floor))
        print_row(rows[-2])
        print_row(rows[-1])
    return rows


def bench_others(repeats: int, b: int = 512) -> list[dict[str, object]]:
    """The other metriclearn losses on the same batch (alone: pml has no direct counterpart)."""
    contenders: dict[str, Callable[[], None]] = {}
    x, labels = batch(b)
    try:
        from metriclearn.losses import SoftNearestNeighborLoss

        contenders["SoftNearestNeighborLoss"] = step(SoftNearestNeighborLoss(), x, labels)
    except ImportError as error:
        print(f"skipped SoftNearestNeighborLoss: {error}")
    try:
        from metriclearn.losses import PrototypeLoss

        for mode in ("learned", "ema", "batch"):
            contenders[f"PrototypeLoss({mode})"] = step(PrototypeLoss(CLASSES, D, mode=mode), x, labels)
    except ImportError as error:
        print(f"skipped PrototypeLoss: {error}")
    try:
        from metriclearn.losses import ComplementEntropyLoss

        logits = torch.randn(b, CLASSES).requires_grad_(True)  # (B, K)
        contenders["ComplementEntropyLoss"] = step(ComplementEntropyLoss(CLASSES), logits, labels)
    except ImportError as error:
        print(f"skipped ComplementEntropyLoss: {error}")
    if not contenders:
        return []
    contenders["NeighborhoodSoftmaxLoss"] = step(NeighborhoodSoftmaxLoss(), x, labels)  # yardstick
    t = interleaved(contenders, repeats)
    rows = [row(f"{name}, B={b}", t[name], None, None) for name in contenders]
    for r in rows:
        print_row(r)
    return rows


def autograd_uniformity(x: torch.Tensor, labels: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """UniformityLoss written with autograd's pieces (what its hand-written backward replaces)."""
    z = F.normalize(x, dim=1)
    logits = (2.0 * t) * (z @ z.T) - 2.0 * t
    logits = logits.masked_fill(torch.eye(len(x), dtype=torch.bool), float("-inf"))
    return torch.logsumexp(logits.reshape(-1), dim=0) - math.log(len(x) * (len(x) - 1))


def bench_uniformity(repeats: int, sizes: tuple[int, ...] = (128, 512)) -> list[dict[str, object]]:
    """UniformityLoss's hand-written backward against autograd through the same formula (no pml counterpart)."""
    from metriclearn.losses import UniformityLoss

    rows = []
    for b in sizes:
        x, labels = batch(b)
        t = interleaved({"fused": step(UniformityLoss(), x, labels), "autograd": step(autograd_uniformity, x, labels)},
                        max(10, repeats * 512 // b))
        rows += [row(f"UniformityLoss, hand-written backward, B={b}", t["fused"], None, None),
                 row(f"UniformityLoss as autograd pieces, B={b}", t["autograd"], None, None)]
        print_row(rows[-2])
        print_row(rows[-1])
    return rows


def bench_default_objective(repeats: int, sizes: tuple[int, ...] = (128, 512)) -> list[dict[str, object]]:
    """The default objective's loss (cosine neighbourhood softmax at T = 0.15 + 0.05 · uniformity): the fused
    kernel (one Gram matrix, forward and backward) against the two terms apart, and pml's ``NCALoss``.

    Floor of the fused step: one (B, B, D) GEMM forward and one backward (4·B²·D flops) and 2·B² exponentials
    (the softmax and the uniformity weights).
    """
    from pytorch_metric_learning.losses import NCALoss

    from metriclearn.losses import UniformityLoss
    from metriclearn.losses._neighborhood_uniformity import neighborhood_and_uniformity

    nb, un = NeighborhoodSoftmaxLoss(0.15, "cosine"), UniformityLoss()

    def fused(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value, spread = neighborhood_and_uniformity(nb, un, x, labels)
        return value + 0.05 * spread

    rows = []
    for b in sizes:
        x, labels = batch(b)
        floor = 4 * b * b * D / GEMM_RATE + 2 * b * b / EXP_RATE
        contenders = {"fused": step(fused, x, labels), "apart": step(lambda e, y: nb(e, y) + 0.05 * un(e), x, labels),
                      "pml": step(NCALoss(), x, labels)}
        t = interleaved(contenders, max(10, repeats * 512 // b))
        rows += [row(f"default objective, fused kernel, vs NCALoss, B={b}", t["fused"], t["pml"], floor),
                 row(f"default objective, the two terms apart, vs NCALoss, B={b}", t["apart"], t["pml"], floor)]
        print_row(rows[-2])
        print_row(rows[-1])
    return rows


def print_row(r: dict[str, object]) -> None:
    def cell(key: str, fmt: str = ".2f") -> str:
        return format(r[key], fmt) if key in r else ""

    def pair(key: str, second: str) -> str:
        return f"{cell(key)} ({cell(second)})" if key in r else ""

    cells = [str(r["case"]), pair("metriclearn_ms", "metriclearn_min_ms"), pair("pml_ms", "pml_min_ms")]
    cells += [pair("speedup", "speedup_min"), cell("floor_ms"), cell("floor_fraction")]
    print("| " + " | ".join(cells) + " |")


def environment(threads: int) -> dict[str, object]:
    import pytorch_metric_learning

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": f"{model}, {torch.get_num_threads()} threads used of {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__,
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "load_average_at_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=200, help="calls per contender at B=512 (scaled by size)")
    parser.add_argument("--quick", action="store_true", help="B in (512, 2048), 4096 slots, fewer repeats")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--only-default-objective", action="store_true",
                        help="only the default objective's loss, fused and apart (B = 128, 512)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 60 if args.quick else args.repeats
    env = environment(args.threads)
    for key, value in env.items():
        print(f"- {key}: {value}")
    gemm, exp = measured_rates()
    print(f"- measured now: SGEMM {gemm / 1e9:.0f} GFLOP/s, exp {exp / 1e9:.2f} Gelem/s (floors use 200 and 3.5)\n")
    print("| case | metriclearn ms, median (min) | pml ms, median (min) | speed-up pml/ours, medians (minima) | floor ms | floor / median |")
    print("|---|---:|---:|---:|---:|---:|")
    sizes = [512, 2048] if args.quick else [256, 512, 1024, 2048]
    slots = [4096] if args.quick else [1024, 4096, 16384]
    if args.only_default_objective:
        rows = bench_default_objective(repeats)
    else:
        rows = bench_neighborhood(sizes, repeats) + bench_cache(slots, repeats) + bench_others(repeats)
        rows += bench_uniformity(repeats) + bench_default_objective(repeats)
    env["load_average_at_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n- load average at end: {env['load_average_at_end']} (1, 5, 15 min; {os.cpu_count()} cores)")
    if args.json is not None:
        from metriclearn._atomic import write_json

        write_json(args.json, {"environment": env, "measured_rates": {"gemm": gemm, "exp": exp}, "rows": rows})


if __name__ == "__main__":
    main()
