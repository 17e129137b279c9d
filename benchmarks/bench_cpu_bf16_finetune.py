"""Is bf16 autocast worth it on this CPU? One MiniLM fine-tuning step, float32 against bf16, side by side.

The trainer turns bf16 autocast on for a fine-tuned transformer on CPUs with native bf16 arithmetic
(AVX-512-BF16 or AMX; ``metriclearn.training.trainer.cpu_has_bf16``) and nowhere else. This measures the
reason: forward + backward of all-MiniLM-L6-v2 (the ``text`` extra) with a 64-d head on ``--batch`` texts of
about 20 tokens, the two precisions alternated ``--reps`` times after one warm-up step each, median seconds.

Usage: python benchmarks/bench_cpu_bf16_finetune.py [--batch 16] [--reps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from metriclearn.sentence import SentenceEncoder
from metriclearn.training.trainer import cpu_has_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = SentenceEncoder(None, embedding_dim=64, freeze=False, max_length=32).train()
    texts = [f"sentence number {i} about some topic with a few more words to make it longer {i * 7}"
             for i in range(args.batch)]
    encoder.tokenize(texts)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = encoder(texts)
        out.float().sum().backward()
        return time.perf_counter() - start

    step(False), step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.reps):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"native bf16: {cpu_has_bf16()}; batch {args.batch}, {args.threads} thread(s), {args.reps} reps")
    print(f"float32 {fp32:.3f} s/step, bf16 autocast {bf16:.3f} s/step: bf16 is {fp32 / bf16:.2f}x as fast")


if __name__ == "__main__":
    main()
