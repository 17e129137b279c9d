"""Why a cache of detached negatives collapses pair training, and what recentring does — in seconds, not hours.

The fine-tuning benchmark (``bench_text_finetune.py pairs``, BENCHMARKS.md (b2)) found that ``CacheLoss`` makes
MiniLM's embeddings bunch up on pair data. Fine-tuning takes ~5 min a run on this machine; this stand-in takes
~5 s: all-MiniLM-L6-v2's pooled embeddings of the WordNet pairs are computed once (frozen), and a residual
two-layer head ``z = x + W2 relu(W1 x)`` (W2 starts at 0, so training starts at raw MiniLM) is trained on them
with AdamW for one epoch at batch 16 pairs, temperature 0.05, the cache's warm-up 10 % of the steps — the
settings of (b2). Contenders (each from the same initial head, on the same batches):

* ``in-batch``: the neighbourhood loss over the batch, pair ids as labels (no cache);
* ``cache``: ``CacheLoss`` with 1024 slots of *detached* embeddings of earlier batches (``recenter=False``);
* ``cache, recentred``: the same with ``recenter=True`` (the default): the gradient loses its batch mean;
* ``fresh detached``: the same 1024 earlier texts, but re-embedded by the *current* head at every step, still
  without gradient — no staleness at all (``recenter=False``);
* ``fresh detached, recentred``;
* ``fresh with gradient``: the same texts re-embedded with gradient: an exact larger batch (what more negatives
  can give at most), scored as extra columns only (their own rows are not anchors).
* ``in-batch + cache, recentred``: two terms, the in-batch loss plus ``CacheLoss`` (``--loss neighborhood --loss
  cache``);
* ``in-batch + constant keys, recentred``: two terms, the in-batch loss plus a term in which each row is scored
  against *detached* keys only — the batch's other rows (its partner the positive) and the cache — as MoCo does
  with a momentum encoder (here the current one): the positive is a fixed target like the negatives.

Score: each of the 1000 held-out anchors against all 1000 held-out definitions: Recall@10, MRR@10, and the mean
cosine between two different held-out texts (how bunched the embeddings are). Medians of per-seed numbers are
not needed: every seed is printed, then mean ± SD.

Run: ``PYTHONPATH=. python benchmarks/bench_cache_collapse.py --seeds 0 1 2`` (writes
``benchmarks/results_cache_collapse.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _text_data import wordnet_pairs, wordnet_sense_pairs  # noqa: E402
from _wordnet_minilm import cache_dir  # noqa: E402

from metriclearn.losses import CacheLoss, NeighborhoodSoftmaxLoss  # noqa: E402
from metriclearn.losses._recenter import is_unit, recenter_gradient  # noqa: E402

HERE = Path(__file__).resolve().parent
CONTENDERS = ("in-batch", "cache", "cache, recentred", "fresh detached", "fresh detached, recentred",
              "fresh with gradient", "in-batch + cache, recentred", "in-batch + constant keys, recentred")


DATA = {"examples": ("wordnet_pairs", wordnet_pairs), "senses": ("wordnet_senses", wordnet_sense_pairs)}


def embedded_pairs(max_length: int = 32, path: Path | None = None,
                   data: str = "examples") -> dict[str, tuple[Tensor, Tensor]]:
    """Raw MiniLM embeddings (unit) of the train and test pairs' anchors and positives, cached as .npz."""
    name, load = DATA[data]
    path = path or cache_dir() / f"{name}_minilm_{max_length}.npz"
    if not path.exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        from metriclearn.sentence import default_model_path

        model = SentenceTransformer(str(default_model_path()), device="cpu")
        model.max_seq_length = max_length
        arrays = {f"{part}_{side}": model.encode([p[side] for p in pairs], batch_size=64)
                  for part, pairs in load().items() for side in ("anchor", "positive")}
        np.savez(path, **arrays)
    data = np.load(path)
    return {part: (torch.tensor(data[f"{part}_anchor"]), torch.tensor(data[f"{part}_positive"]))
            for part in ("train", "test")}


class Head(nn.Module):
    """z = x + W2 relu(W1 x), starting at the identity (W2 = 0); unit rows with ``normalize``."""

    def __init__(self, dim: int = 384, hidden: int = 768, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, D) -> (N, D)
        z = x + self.down(torch.relu(self.up(x)))  # (N, D)
        return F.normalize(z, dim=1) if self.normalize else z


def extra_columns_loss(z: Tensor, labels: Tensor, refs: Tensor, ref_labels: Tensor, temperature: float,
                       batch_columns: bool = True) -> Tensor:
    """The cache loss (cosine) with ``refs`` as extra columns that may carry gradient; rows of z are the anchors.

    Without ``batch_columns`` the rows are scored against ``refs`` alone, whose first B rows must then be the
    batch's own keys (row i's own key at column i is left out)."""
    x, r = F.normalize(z, dim=1), F.normalize(refs, dim=1)  # (B, D), (M, D)
    b = x.shape[0]
    if not batch_columns:
        logits = x @ r.T / temperature  # (B, M)
        own = torch.zeros(b, r.shape[0], dtype=torch.bool)
        own[:, :b] = torch.eye(b, dtype=torch.bool)
        positive = (labels[:, None] == ref_labels[None, :]) & ~own
        logits = logits.masked_fill(own, float("-inf"))
        return (torch.logsumexp(logits, 1)
                - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)).mean()
    logits = torch.cat([x @ x.T, x @ r.T], 1) / temperature  # (B, B + M)
    keys = torch.cat([labels, ref_labels])  # (B + M,)
    own = torch.cat([torch.eye(b, dtype=torch.bool), torch.zeros(b, r.shape[0], dtype=torch.bool)], 1)
    logits = logits.masked_fill(own, float("-inf"))
    positive = (labels[:, None] == keys[None, :]) & ~own  # (B, B + M)
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), 1)).mean()


def scores(head: nn.Module, test: tuple[Tensor, Tensor]) -> dict[str, float]:
    with torch.no_grad():
        a, p = (F.normalize(head(t), dim=1) for t in test)  # (Q, D) each
    sim = a @ p.T  # (Q, Q): anchor i's relevant definition is i
    rank = (sim > sim.diag()[:, None]).sum(1)  # (Q,) 0-based rank of the relevant definition
    both = torch.cat([a, p])  # (2Q, D)
    n = both.shape[0]
    return {"recall_at_1": float((rank == 0).float().mean()), "recall_at_10": float((rank < 10).float().mean()),
            "mrr_at_10": float(torch.where(rank < 10, 1.0 / (rank + 1), torch.zeros(())).mean()),
            "mean_cos": float((both.sum(0).square().sum() - n) / (n * (n - 1)))}


def train(contender: str, data: dict[str, tuple[Tensor, Tensor]], args: argparse.Namespace, seed: int) -> dict:
    anchors, positives = (t[: args.pairs] for t in data["train"])
    per_epoch = args.pairs // args.batch
    steps = per_epoch * args.epochs
    warmup = max(1, int(0.1 * steps))
    torch.manual_seed(seed)
    head = Head(normalize=args.normalize)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr)
    in_batch = NeighborhoodSoftmaxLoss(args.temperature, "cosine")
    recenter = contender.endswith("recentred")
    cache = CacheLoss(384, size=args.slots, temperature=args.temperature, warmup_steps=warmup, recenter=recenter)
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(args.pairs, generator=generator) for _ in range(args.epochs)])
    history: list[Tensor] = []  # pair ids of earlier batches (fresh contenders)
    losses = []
    for step in range(steps):
        ids = order[step * args.batch : (step + 1) * args.batch]  # (b,) pair ids
        labels = torch.cat([ids, ids])  # (2b,) anchors then positives
        z = head(torch.cat([anchors[ids], positives[ids]]))  # (2b, D)
        kept = history[-(args.slots // (2 * args.batch)):]
        earlier = torch.cat(kept) if kept and step >= warmup else ids[:0]  # (m,) pair ids
        earlier_x = torch.cat([anchors[earlier], positives[earlier]])  # (2m, D)
        if contender == "in-batch":
            loss = in_batch(z, labels)
        elif contender.startswith("cache"):
            loss = cache(z, labels, ids=labels)
        elif contender.startswith("fresh detached"):
            with torch.no_grad():  # the cache's slots re-embedded by the current head
                fresh = F.normalize(head(earlier_x), dim=1)
            cache.reset()
            cache.step.fill_(warmup)
            if len(earlier):
                cache.update(fresh, torch.cat([earlier, earlier]), torch.cat([earlier, earlier]))
                cache.step.fill_(warmup)
            cache.eval()  # score without enqueuing the batch (the slots are rebuilt every step)
            with torch.enable_grad():
                loss = cache(z, labels, ids=labels)
            cache.train()
        elif contender == "fresh with gradient":
            loss = extra_columns_loss(z, labels, head(earlier_x), torch.cat([earlier, earlier]), args.temperature)
        elif contender == "in-batch + cache, recentred":
            loss = in_batch(z, labels) + cache(z, labels, ids=labels)
        else:  # in-batch + constant keys: the query rows alone carry gradient in the second term
            keys = F.normalize(z.detach(), dim=1)  # (2b, D)
            cached = cache.scored_slots()
            rows = recenter_gradient(z, unit=is_unit(z)) if cached else z
            second = extra_columns_loss(rows, labels, torch.cat([keys, cache.cache_embeddings[:cached]]),
                                        torch.cat([labels, cache.cache_labels[:cached]]), args.temperature,
                                        batch_columns=False)
            loss = in_batch(z, labels) + second
            cache.update(z, labels, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(ids)
        losses.append(float(loss))
    return {**scores(head, data["test"]), "train_loss_last_quarter": statistics.mean(losses[-steps // 4:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--slots", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--normalize", action="store_true",
                        help="the head returns unit rows, as metriclearn's encoders do by default")
    parser.add_argument("--embeddings", type=Path, help="an .npz of other pairs' embeddings: arrays "
                        "{train,test}_{anchor,positive} (default: the WordNet example -> definition pairs)")
    parser.add_argument("--data", choices=sorted(DATA), default="examples",
                        help="examples: usage example -> definition (_text_data.wordnet_pairs); senses: usage "
                             "example -> 'headword: definition', split by headword (_text_data.wordnet_sense_pairs)")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, help="run only these contenders")
    parser.add_argument("--out", default=str(HERE / "results_cache_collapse.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = embedded_pairs(path=args.embeddings, data=args.data)
    results: dict[str, dict] = {"raw MiniLM": scores(nn.Identity(), data["test"])}
    print(f"raw MiniLM: {results['raw MiniLM']}")
    for contender in args.only or CONTENDERS:
        runs = {}
        for seed in args.seeds:
            start = time.perf_counter()
            runs[seed] = train(contender, data, args, seed)
            print(f"{contender:28s} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in runs[seed].items())
                  + f" ({time.perf_counter() - start:.1f} s)", flush=True)
        results[contender] = runs
    print("\n| contender | Recall@1 | Recall@10 | MRR@10 | mean cos |\n|---|---|---|---|---|")
    for name, runs in results.items():
        rows = [runs] if name == "raw MiniLM" else list(runs.values())
        cells = []
        for key in ("recall_at_1", "recall_at_10", "mrr_at_10", "mean_cos"):
            values = [r[key] for r in rows]
            sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{sd}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
    Path(args.out).write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
