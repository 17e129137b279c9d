"""Where a training step's time goes: metriclearn's ``Trainer`` (default objective) vs a plain PML NCA loop.

The protocol of ``bench_mnist.py`` (MNIST-5000 split, metriclearn's MLP 784-256-64, batch 128). Each phase of a
step is wrapped in a ``torch.profiler.record_function`` label — batch gather (``_take``), model forward, loss
forward, backward, gradient clipping, optimiser step, LR schedule — and the loop runs one epoch under
``torch.profiler.profile``; a phase's time is its label's CPU total, "loop (rest)" is the wall time of the
epoch minus the phases (sampler, logs, progress bar, Python glue). The same labels wrap the PML loop.

Run: ``python benchmarks/bench_step_profile.py [--threads 1] [--rounds 5]``. Run it with ``PYTHONPATH`` pointing
at another checkout to profile that version (the "before" column of BENCHMARKS.md was taken so, from the
commit before issue 23's loop changes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mnist import BATCH, EMB, load_split

PHASES = ("gather batch", "model forward", "loss forward", "backward", "clip grad norm", "optimizer step",
          "lr schedule")


def labelled(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapper


def phases(prof: Any, seconds: float, steps: int) -> dict[str, float]:
    """ms per step of each labelled phase, and the rest of the wall time."""
    totals = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages() if e.key in PHASES}  # ms
    out = {name: totals.get(name, 0.0) / steps for name in PHASES}
    out["loop (rest)"] = max(seconds * 1e3 / steps - sum(out.values()), 0.0)
    out["step, wall"] = seconds * 1e3 / steps
    return out


def profile_metriclearn(Xtr: Any, ytr: Any) -> dict[str, float]:
    import metriclearn.training.trainer as trainer_module
    from metriclearn.training import TrainConfig
    from metriclearn.training.run import build_model, make_trainer
    from metriclearn.training.trainer import seed_everything

    config = TrainConfig().replace(epochs=2, batch_size=BATCH, embedding_dim=EMB, encoder="mlp:256", device="cpu",
                                   seed=0)
    seed_everything(0)
    model = build_model(config, (784,))
    trainer = make_trainer(config, model, 10, verbose=False)
    model.forward = labelled("model forward", model.forward)  # type: ignore[method-assign]
    objective = trainer.objective
    objective.term_losses = labelled("loss forward", objective.term_losses)  # type: ignore[method-assign]
    objective.backward = labelled("backward", objective.backward)  # type: ignore[method-assign]
    step = labelled("optimizer step", trainer.optimizer.step)
    # a bound method, as torch's LR schedulers expect to find and re-wrap
    trainer.optimizer.step = types.MethodType(lambda _self, *a, **k: step(*a, **k), trainer.optimizer)  # type: ignore[method-assign]
    take, clip = trainer_module._take, torch.nn.utils.clip_grad_norm_
    trainer_module._take = labelled("gather batch", take)
    torch.nn.utils.clip_grad_norm_ = labelled("clip grad norm", clip)
    original_schedule = trainer_module.Trainer._make_scheduler

    def make_scheduler(self: Any, total: int) -> Any:
        scheduler = original_schedule(self, total)
        scheduler.step = labelled("lr schedule", scheduler.step)
        return scheduler

    trainer_module.Trainer._make_scheduler = make_scheduler  # type: ignore[method-assign]
    try:
        trainer.fit((Xtr, ytr), None, epochs=1)  # warm-up epoch, unprofiled
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.fit((Xtr, ytr), None, epochs=2)  # the second epoch
    finally:
        trainer_module._take, torch.nn.utils.clip_grad_norm_ = take, clip
        trainer_module.Trainer._make_scheduler = original_schedule  # type: ignore[method-assign]
    steps = -(-len(ytr) // BATCH)
    return phases(prof, trainer.history[-1]["seconds"], steps)


def profile_pml(Xtr: Any, ytr: Any) -> dict[str, float]:
    from pytorch_metric_learning.losses import NCALoss

    from metriclearn.encoders import build_encoder

    torch.manual_seed(0)
    model = build_encoder("mlp", (784,), EMB)
    model.standardize.fit(Xtr)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    nca = NCALoss()
    X, y = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(0)
    model.train()

    def epoch() -> float:
        start = time.perf_counter()
        for idx in torch.randperm(len(X), generator=gen).split(BATCH):
            with record_function("gather batch"):
                xb, yb = X[idx], y[idx]
            with record_function("model forward"):
                emb = model(xb)
            with record_function("loss forward"):
                loss = nca(emb, yb)
            opt.zero_grad()
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer step"):
                opt.step()
        return time.perf_counter() - start

    epoch()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = epoch()
    return phases(prof, seconds, -(-len(X) // BATCH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Xtr, ytr, _, _ = load_split()
    runs: dict[str, list[dict[str, float]]] = {"metriclearn Trainer (default objective)": [], "PML NCA loop": []}
    for _ in range(args.rounds):
        runs["metriclearn Trainer (default objective)"].append(profile_metriclearn(Xtr, ytr))
        runs["PML NCA loop"].append(profile_pml(Xtr, ytr))
    import metriclearn

    print(f"metriclearn from {Path(metriclearn.__file__).parent}; torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds, load average "
          f"{' '.join(f'{v:.1f}' for v in __import__('os').getloadavg())}")
    names = list(runs)
    print("| phase, ms per step (median) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for phase in (*PHASES, "loop (rest)", "step, wall"):
        cells = [f"{statistics.median(r[phase] for r in runs[n]):.3f}" for n in names]
        print(f"| {phase} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
