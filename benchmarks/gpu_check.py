"""``make gpu-check``: every GPU-marked test, then a short GPU benchmark, summed up in ONE table.

Run from the repository root on a machine with a CUDA GPU (under 5 minutes on one H100)::

    python benchmarks/gpu_check.py               # pytest -m gpu, then the benchmark
    python benchmarks/gpu_check.py --no-tests    # the benchmark only
    python benchmarks/gpu_check.py --cpu-smoke   # tiny sizes on CPU: exercises this script's code, not the GPU

Without CUDA it prints one line and exits 0. It exits 1 when a GPU test fails, a part of the benchmark
raises, or a sanity check (same neighbours, same loss values, a finite AMP loss) fails; the table is printed
in every case.

What is measured (GPU work timed with ``torch.cuda.Event`` pairs after warm-up calls and a
``torch.cuda.synchronize()``; the median of the repeats; faiss calls take and return host arrays, so they
are timed by the wall clock around the call, which includes those small copies):

- **flat kNN** (N = 1 M stored vectors, D = 128, Q = 4096 queries, k = 10), as exact FP32 (TF32 off):
  torch ``matmul`` + ``topk`` in query chunks, and faiss-gpu's flat index; the rate counts the 2·Q·N·D
  flops of the distance GEMM and is compared with the GPU's nominal FP32 (non-tensor-core) peak, and with
  a measured 8192³ SGEMM;
- **loss kernels**: forward + backward of ``NeighborhoodSoftmaxLoss`` against pytorch-metric-learning's
  ``NCALoss`` (B = 4096), and ``CacheLoss`` against ``CrossBatchMemory(NCALoss)`` (B = 1024, 16 384 slots,
  steady state), with the relative difference of the loss values;
- **faiss-gpu against faiss-cpu** through :class:`metriclearn.indexes.EmbeddingIndex` (flat and IVF,
  same data, same 1024 queries), with the GPU answers' recall of the CPU ones;
- **AMP training**: one ``Trainer`` step (MLP encoder, default objective, batch 1024) with ``amp=True``
  against FP32, ms per step over repeated steps (``Trainer.overfit_batch``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

NO_CUDA = "gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False): nothing to check"
FAISS_GPU_HINT = "pip uninstall -y faiss-cpu && pip install faiss-gpu"
TEST_TIMEOUT_S = 240  # the GPU tests' share of the 5 minutes

# Nominal FP32 (CUDA-core, not tensor-core) peaks in TFLOP/s, from NVIDIA's data sheets; the first name
# contained in the device's name wins (so "H100 PCIe" before "H100").
FP32_PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 51.2, "H100 NVL": 60.0, "H100": 66.9, "H200": 66.9, "GH200": 66.9, "A100": 19.5,
    "L40S": 91.6, "L40": 90.5, "L4": 30.3, "A10G": 31.2, "A10": 31.2, "V100": 15.7, "T4": 8.1,
}


@dataclass
class Sizes:
    """Problem sizes: the real ones, or tiny ones for ``--cpu-smoke``."""

    n: int = 1_000_000  # stored vectors
    dim: int = 128
    queries: int = 4096
    index_queries: int = 1024  # faiss-cpu is the slow side
    k: int = 10
    nlist: int = 1024
    nprobe: int = 32
    loss_batch: int = 4096
    cache_batch: int = 1024
    cache_slots: int = 16384
    train_batch: int = 1024
    train_width: int = 1024
    gemm: int = 8192
    repeats: int = 20

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(n=3000, dim=16, queries=64, index_queries=32, nlist=16, nprobe=4, loss_batch=128,
                   cache_batch=64, cache_slots=256, train_batch=64, train_width=32, gemm=64, repeats=2)


@dataclass
class Row:
    """One line of the summary table."""

    check: str
    measured: str
    reference: str = ""
    ratio: str = ""
    ok: bool = True


# --------------------------------------------------------------------------------------------- timing
def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, after ``warmup`` calls.

    On CUDA each call sits between two recorded ``torch.cuda.Event``s and the end event is waited for, so
    the time is the GPU's, not the launch's; on CPU (``--cpu-smoke``) ``time.perf_counter``.
    """
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def wall_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of a call that returns host data (faiss), device idle before each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fp32_peak(name: str) -> float | None:
    """Nominal FP32 TFLOP/s of a GPU by its name, or ``None`` when it is not in the table."""
    for key, tflops in FP32_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return tflops
    return None


def faiss_gpus() -> int:
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


# --------------------------------------------------------------------------------------------- the parts
def run_gpu_tests() -> list[Row]:
    """``pytest -m gpu`` in a child process (its own CUDA context); one row with the counts."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rfEs", "-p", "no:cacheprovider", "-n", "0", "tests"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TEST_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        return [Row("GPU tests (pytest -m gpu)", f"timed out after {TEST_TIMEOUT_S} s", ok=False)]
    out = done.stdout + done.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", out)}  # last wins
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    ok = done.returncode == 0 and failed == 0 and counts.get("passed", 0) > 0
    if not ok:  # show what went wrong above the table
        print(out[-6000:], file=sys.stderr)
    skipped = counts.get("skipped", 0)
    note = f"{failed} failed, {skipped} skipped" + (" (faiss-gpu missing?)" if skipped else "")
    return [Row("GPU tests (pytest -m gpu)", f"{counts.get('passed', 0)} passed", note, f"exit {done.returncode}", ok)]


def bench_flat_knn(device: torch.device, s: Sizes) -> list[Row]:
    """Exact FP32 flat kNN: torch matmul + topk and faiss-gpu, against the FP32 peak and a measured SGEMM."""
    torch.backends.cuda.matmul.allow_tf32 = False  # exact FP32: TF32 would beat the FP32 peak and round
    gen = torch.Generator(device="cpu").manual_seed(0)
    xb = torch.randn(s.n, s.dim, generator=gen).to(device)  # (N, D)
    xq = torch.randn(s.queries, s.dim, generator=gen).to(device)  # (Q, D)
    flops = 2.0 * s.queries * s.n * s.dim
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = fp32_peak(name)

    a = torch.randn(s.gemm, s.gemm, generator=gen).to(device)
    sgemm_ms = median_ms(lambda: a @ a, device, max(3, s.repeats // 2))
    sgemm = 2.0 * s.gemm**3 / (sgemm_ms * 1e-3) / 1e12
    reference = peak if peak is not None else sgemm
    ref_text = f"{peak:.1f} nominal FP32" if peak is not None else f"{sgemm:.1f} measured SGEMM (no nominal for {name})"
    rows = [Row(f"SGEMM {s.gemm}³ FP32 ({name})", f"{sgemm:.1f} TFLOP/s", ref_text,
                f"{sgemm / reference:.2f}" if peak is not None else "")]

    sq_norms = (xb * xb).sum(dim=1)  # (N,) ‖x‖² once, as a stored index keeps it
    chunk = max(1, min(s.queries, int(2**30 // s.n)))  # ≤ 4 GiB of float32 scores at a time

    def torch_knn() -> torch.Tensor:
        out = []
        for i in range(0, s.queries, chunk):
            q = xq[i : i + chunk]
            d = torch.addmm(sq_norms.expand(len(q), -1), q, xb.T, alpha=-2.0)  # (c, N) ‖x‖² − 2 q·x, one GEMM
            out.append(d.topk(s.k, dim=1, largest=False).indices)  # the ranking of ‖q − x‖²
        return torch.cat(out)

    ms = median_ms(torch_knn, device, max(3, s.repeats // 2))
    rate = flops / (ms * 1e-3) / 1e12
    rows.append(Row(f"flat kNN torch matmul+topk (N={s.n:,}, Q={s.queries}, k={s.k})",
                    f"{rate:.1f} TFLOP/s ({ms:.1f} ms)", ref_text, f"{rate / reference:.2f}"))
    if faiss_gpus() == 0:
        rows.append(Row("flat kNN faiss-gpu", "faiss-gpu not installed or sees no GPU", FAISS_GPU_HINT))
        return rows
    import faiss

    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatL2(res, s.dim)
    xb_np, xq_np = xb.cpu().numpy(), xq.cpu().numpy()
    index.add(xb_np)
    ms = wall_ms(lambda: index.search(xq_np, s.k), device, max(3, s.repeats // 2))
    rate = flops / (ms * 1e-3) / 1e12
    same = _recall(index.search(xq_np, s.k)[1], torch_knn().cpu().numpy())
    rows.append(Row(f"flat kNN faiss-gpu GpuIndexFlatL2 (same data), recall of torch's {same:.3f}",
                    f"{rate:.1f} TFLOP/s ({ms:.1f} ms)", ref_text, f"{rate / reference:.2f}", ok=same >= 0.99))
    return rows


def bench_losses(device: torch.device, s: Sizes) -> list[Row]:
    """Forward + backward of our loss kernels and pytorch-metric-learning's, same batch, same device."""
    from metriclearn.losses import CacheLoss, NeighborhoodSoftmaxLoss

    try:
        from pytorch_metric_learning.losses import CrossBatchMemory, NCALoss
    except ImportError:
        return [Row("loss kernels vs pytorch-metric-learning", "pytorch-metric-learning not installed",
                    "pip install -e '.[dev]'", ok=False)]
    gen = torch.Generator(device="cpu").manual_seed(0)

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.normalize(torch.randn(b, s.dim, generator=gen), dim=1).to(device).requires_grad_(True)
        return x, torch.randint(0, 256, (b,), generator=gen).to(device)

    def step(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            x.grad = None
            value = loss(x, y)
            value.backward()
            return value.detach()

        return run

    rows = []
    x, y = batch(s.loss_batch)
    ours, theirs = NeighborhoodSoftmaxLoss(), NCALoss()  # same loss: squared euclidean, temperature 1
    rel = _rel(step(ours, x, y)(), step(theirs, x, y)())
    t_ours = median_ms(step(ours, x, y), device, s.repeats)
    t_theirs = median_ms(step(theirs, x, y), device, s.repeats)
    rows.append(Row(f"NeighborhoodSoftmaxLoss vs pml NCALoss, fwd+bwd, B={s.loss_batch} (values differ {rel:.1e})",
                    f"{t_ours:.2f} ms", f"{t_theirs:.2f} ms", f"{t_theirs / t_ours:.2f}×", ok=rel < 1e-4))

    batches = [batch(s.cache_batch) for _ in range(4)]
    ours_c = CacheLoss(s.dim, size=s.cache_slots, temperature=1.0, distance="sqeuclidean").to(device)
    theirs_c = CrossBatchMemory(NCALoss(), embedding_size=s.dim, memory_size=s.cache_slots).to(device)
    state = {"ours": 0, "theirs": 0}

    def cycling(loss: torch.nn.Module, who: str) -> Callable[[], object]:
        def run() -> object:
            xb, yb = batches[state[who] % len(batches)]
            state[who] += 1
            return step(loss, xb, yb)()

        return run

    for _ in range(s.cache_slots // s.cache_batch + 1):  # fill both memories: the steady state
        cycling(ours_c, "ours")()
        cycling(theirs_c, "theirs")()
    t_ours = median_ms(cycling(ours_c, "ours"), device, s.repeats)
    t_theirs = median_ms(cycling(theirs_c, "theirs"), device, s.repeats)
    rows.append(Row(f"CacheLoss vs pml CrossBatchMemory(NCALoss), B={s.cache_batch}, {s.cache_slots} slots",
                    f"{t_ours:.2f} ms", f"{t_theirs:.2f} ms", f"{t_theirs / t_ours:.2f}×"))
    return rows


def bench_faiss(device: torch.device, s: Sizes) -> list[Row]:
    """The package's index on faiss-gpu against the same index on faiss-cpu (flat and IVF)."""
    from metriclearn.indexes import EmbeddingIndex

    if device.type == "cuda" and faiss_gpus() == 0:
        return [Row("faiss-gpu vs faiss-cpu (EmbeddingIndex)", "faiss-gpu not installed or sees no GPU",
                    FAISS_GPU_HINT)]
    gen = np.random.default_rng(0)
    xb = gen.standard_normal((s.n, s.dim), dtype=np.float32)
    xq = gen.standard_normal((s.index_queries, s.dim), dtype=np.float32)
    gpu_device = "cuda" if device.type == "cuda" else "cpu"  # --cpu-smoke: both sides on CPU
    rows = []
    for kind in ("flat", "ivf"):
        times, answers = {}, {}
        for side in ("cpu", gpu_device):
            index = EmbeddingIndex(s.dim, metric="l2", kind=kind, device=side, nlist=s.nlist, nprobe=s.nprobe)
            index.add(xb)
            search = partial(index.search, xq, s.k)
            times[side] = wall_ms(search, device, max(2, s.repeats // 4), warmup=1)  # warm-up: the GPU copy
            answers[side] = search()[1]
        recall = _recall(answers[gpu_device], answers["cpu"])
        floor = 0.99 if kind == "flat" else 0.95  # IVF: GPU and CPU k-selection may order ties differently
        rows.append(Row(f"EmbeddingIndex {kind} (N={s.n:,}, Q={s.index_queries}), GPU recall of CPU {recall:.3f}",
                        f"{times[gpu_device]:.1f} ms on {gpu_device}", f"{times['cpu']:.1f} ms on cpu",
                        f"{times['cpu'] / times[gpu_device]:.1f}×", ok=recall >= floor))
    return rows


def bench_amp(device: torch.device, s: Sizes) -> list[Row]:
    """One training step through ``Trainer`` with ``amp=True`` against FP32 (TF32 off), ms per step."""
    from metriclearn._progress import set_quiet
    from metriclearn.encoders import build_encoder
    from metriclearn.training import Trainer
    from metriclearn.training.objectives import build_objective

    set_quiet(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = np.random.default_rng(0)
    classes = min(64, s.train_batch // 4)
    y = np.repeat(np.arange(classes), 4 * s.train_batch // classes)  # (N,) balanced, 4 batches' worth
    X = (gen.standard_normal((classes, s.train_width)) * 3)[y] + gen.standard_normal((len(y), s.train_width))
    X = X.astype(np.float32)
    per_step: dict[bool, float] = {}
    finite, amp_dtype = True, None
    for amp in (False, True):
        torch.manual_seed(0)
        encoder = build_encoder(f"mlp:{s.train_width},{s.train_width}", (s.train_width,), embedding_dim=128)
        trainer = Trainer(encoder, build_objective(None, 128, classes), batch_size=s.train_batch,
                          samples_per_class=s.train_batch // classes, device=str(device), amp=amp, verbose=False)
        trainer.overfit_batch((X, y), steps=3)  # warm-up: kernels chosen, memory allocated
        seconds = {}
        for steps in (5, 5 + s.repeats):  # the difference cancels each call's set-up (copy to device, sampler)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            losses = trainer.overfit_batch((X, y), steps=steps)  # each step reads its loss: synced every step
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[steps] = time.perf_counter() - t0
            finite &= bool(np.isfinite(losses).all())
        per_step[amp] = (seconds[5 + s.repeats] - seconds[5]) * 1e3 / s.repeats
        if amp:
            amp_dtype = str(trainer.amp_dtype).replace("torch.", "")
    return [Row(f"Trainer step, MLP {s.train_width}-{s.train_width}-128, batch {s.train_batch}, "
                f"AMP ({amp_dtype}) vs FP32", f"{per_step[True]:.2f} ms", f"{per_step[False]:.2f} ms",
                f"{per_step[False] / per_step[True]:.2f}×", ok=finite)]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` that ``found`` holds too."""
    return float(np.mean([len(np.intersect1d(f, t)) / max(len(t), 1) for f, t in zip(found, truth)]))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs() / b.abs().clamp_min(1e-12))


# --------------------------------------------------------------------------------------------- the table
def table(rows: list[Row], header: str) -> str:
    """The summary as one Markdown table (what ``make gpu-check`` prints)."""
    lines = [header, "", "| check | measured | reference | ratio | ok |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.check} | {r.measured} | {r.reference} | {r.ratio} | {'yes' if r.ok else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu; run the benchmark only")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny sizes on CPU, no tests: checks this script runs; the numbers mean nothing")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        device, sizes = torch.device("cpu"), Sizes.smoke()
    elif not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    else:
        device, sizes = torch.device("cuda"), Sizes()
    start = time.perf_counter()
    rows = [] if args.no_tests or args.cpu_smoke else run_gpu_tests()
    for part in (bench_flat_knn, bench_losses, bench_faiss, bench_amp):
        try:
            rows += part(device, sizes)
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others' rows
            traceback.print_exc()
            rows.append(Row(part.__name__, f"raised {type(exc).__name__}: {exc}".replace("|", "/")[:200], ok=False))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--cpu-smoke: sizes too small to mean anything)"
    header = (f"gpu-check on {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s. Ratio: a rate's"
              " fraction of the reference peak, or how many times faster than the reference a time is.")
    print(table(rows, header))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
