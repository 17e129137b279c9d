"""Pair data (anchor/positive[/negative] .jsonl): the loss, the cache, the metrics, and the CLI end to end."""

from __future__ import annotations

import math
import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_f32_close, assert_one_line_error, invoke, kill_train_at

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["dog", "cat", "horse", "rabbit", "parrot", "goat", "sheep", "mouse", "tiger", "whale", "owl", "pizza",
         "soup", "bread", "salad", "cheese", "rice", "guitar", "piano", "violin", "drum", "airport", "hotel"]  # 23


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def pair_file(tmp_path) -> str:
    return _write(tmp_path / "pairs.jsonl", [{"anchor": f"what is a {w}?", "positive": f"a {w} is a thing called {w}"}
                                             for w in WORDS])


# ----------------------------------------------------------------------------------------------- data
def test_pair_file_layout_and_group_files(tmp_path) -> None:
    from metriclearn.data import load_data

    data = load_data(_write(tmp_path / "p.jsonl", [{"anchor": "a", "positive": "A", "negative": "x"},
                                                    {"anchor": "b", "positive": "B", "negative": "y"},
                                                    {"anchor": "c", "positive": "C", "negative": "z"}]))
    assert data.is_pairs and data.X == ["a", "b", "c", "A", "B", "C", "x", "y", "z"]
    assert data.y.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5]  # a negative is a class of its own: never a positive
    assert data.pairs.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]] and data.pair_ids.tolist() == [0, 1, 2] * 3
    held = data.subset_pairs([2, 0], negatives=False)
    assert held.X == ["c", "a", "C", "A"] and held.pairs.tolist() == [[0, 2], [1, 3]]
    groups = load_data(_write(tmp_path / "g.jsonl", [{"text": t, "group": g} for t, g in
                                                      [("hi", "greet"), ("hello", "greet"), ("bye", "part")]]))
    assert not groups.is_pairs and groups.classes == ["greet", "part"] and groups.y.tolist() == [0, 0, 1]


@pytest.mark.parametrize("rows, message", [
    ([{"anchor": "a", "positive": "A"}, {"anchor": "b"}], "line 2: no 'positive'; a pair file has 'anchor' and"),
    ([{"anchor": "a", "positive": "A"}, {"anchor": " ", "positive": "B"}], "line 2: 'anchor' is empty"),
    ([{"anchor": "a", "positive": "A", "negative": "x"}, {"anchor": "b", "positive": "B"}],
     "line 2: no 'negative', unlike the first line"),
    ([{"anchor": "a", "positive": 3}], "line 1: 'positive' must be a string, got 3"),
    ([{"anchor": "a", "positive": "A"}], "needs at least 2 pairs"),
])
def test_bad_pair_files_are_one_line_errors(tmp_path, rows, message) -> None:
    path = _write(tmp_path / "bad.jsonl", rows)
    result = invoke("train", "--data", path, "--encoder", "sentence", "--out", tmp_path / "run")
    assert_one_line_error(result, 1, message)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- the loss
def _naive_symmetric_infonce(anchors, positives, negatives, temperature):
    """NT-Xent / symmetric InfoNCE by loops: every anchor and every positive is a query; its partner is the one
    positive key, every other text of the batch (anchors, positives, negatives) a negative key."""
    texts = torch.cat([anchors, positives] + ([negatives] if negatives is not None else []))
    n = len(anchors)
    terms = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        sims = [F.cosine_similarity(texts[i], texts[j], dim=0) / temperature for j in range(len(texts)) if j != i]
        target = F.cosine_similarity(texts[i], texts[partner], dim=0) / temperature
        terms.append(torch.logsumexp(torch.stack(sims), 0) - target)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("with_negatives", [False, True])
def test_pair_loss_is_the_neighbourhood_loss_with_pair_ids_and_equals_symmetric_infonce(with_negatives) -> None:
    from metriclearn.data import make_pairs
    from metriclearn.losses import NeighborhoodSoftmaxLoss

    g = torch.Generator().manual_seed(3)
    n, dim, t = 7, 5, 0.05
    a, p = torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randn(n, dim, generator=g, dtype=torch.float64)
    neg = torch.randn(n, dim, generator=g, dtype=torch.float64) if with_negatives else None
    labels = torch.as_tensor(make_pairs(["a"] * n, ["p"] * n, ["n"] * n if with_negatives else None).y)
    x = torch.cat([a, p] + ([neg] if with_negatives else [])).requires_grad_(True)
    ours = NeighborhoodSoftmaxLoss(temperature=t, distance="cosine")(x, labels)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _naive_symmetric_infonce(x_ref[:n], x_ref[n : 2 * n], x_ref[2 * n :] if with_negatives else None, t)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)


def _naive_clip_infonce(anchors, positives, negatives, temperature):
    """CLIP's symmetric InfoNCE by loops: an anchor's candidates are the positives and negatives (its partner the
    one positive key), a positive's are the anchors; no text is scored against its own column."""
    documents = torch.cat([positives] + ([negatives] if negatives is not None else []))
    terms = []
    for i in range(len(anchors)):  # anchor -> documents, then positive -> anchors
        for query, keys in ((anchors[i], documents), (positives[i], anchors)):
            sims = [F.cosine_similarity(query, key, dim=0) / temperature for key in keys]
            terms.append(torch.logsumexp(torch.stack(sims), 0) - sims[i])
    return torch.stack(terms).mean()


@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("temperature", [0.05, 2e-3])  # 2e-3: positives underflow, rows redone in the log domain
def test_same_side_false_is_clips_symmetric_infonce(with_negatives, temperature) -> None:
    from metriclearn.data import make_pairs
    from metriclearn.losses import NeighborhoodSoftmaxLoss

    g = torch.Generator().manual_seed(5)
    n, dim = 9, 6
    a, p = torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randn(n, dim, generator=g, dtype=torch.float64)
    neg = torch.randn(n, dim, generator=g, dtype=torch.float64) if with_negatives else None
    data = make_pairs(["a"] * n, ["p"] * n, ["n"] * n if with_negatives else None)
    sides = torch.zeros(len(data.y), dtype=torch.long)
    sides[torch.as_tensor(data.pairs[:, 1:]).reshape(-1)] = 1
    order = torch.randperm(len(data.y), generator=g)  # the rows of a batch come in any order
    x = torch.cat([a, p] + ([neg] if with_negatives else []))[order].requires_grad_(True)
    loss = NeighborhoodSoftmaxLoss(temperature=temperature, distance="cosine", same_side=False)
    ours = loss(x, torch.as_tensor(data.y)[order], sides=sides[order])
    x_ref = x.detach().clone().requires_grad_(True)
    rows = torch.argsort(order)  # row of text k of the original layout
    ref = _naive_clip_infonce(x_ref[rows[:n]], x_ref[rows[n : 2 * n]], x_ref[rows[2 * n :]] if with_negatives else None,
                              temperature)
    per_row = NeighborhoodSoftmaxLoss(temperature, "cosine", reduction="none", same_side=False)(
        x.detach(), torch.as_tensor(data.y)[order], sides=sides[order])
    # at 2e-3 some rows' positive mass is below sqrt(tiny) = 1.5e-154 (a loss over 354): the log-domain path
    assert temperature > 0.01 or float(per_row.max()) > 360
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=0)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-8, atol=1e-12 * float(x_ref.grad.abs().max()))
    # the same batch with every text a candidate (the default) is another loss
    default = NeighborhoodSoftmaxLoss(temperature=temperature, distance="cosine")
    other = default(x.detach(), torch.as_tensor(data.y)[order], sides=sides[order])
    assert float(other) != pytest.approx(float(ours.detach()))


def test_same_side_false_matches_finite_differences_and_needs_sides() -> None:
    from metriclearn.losses import NeighborhoodSoftmaxLoss

    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels, sides = torch.tensor([0, 1, 2, 0, 1, 2, 3]), torch.tensor([0, 0, 0, 1, 1, 1, 1])  # row 6: a negative
    for distance in ("cosine", "sqeuclidean"):
        loss = NeighborhoodSoftmaxLoss(temperature=0.7, distance=distance, same_side=False)
        assert torch.autograd.gradcheck(lambda t, loss=loss: loss(t, labels, sides=sides), (x,))
    per_row = NeighborhoodSoftmaxLoss(0.7, "cosine", reduction="none", same_side=False)(x, labels, sides=sides)
    assert float(per_row[6]) == 0.0 and bool((per_row[:6] > 0).all())  # a negative is a candidate, never a query
    with pytest.raises(ValueError, match="same_side=False .* needs sides"):
        NeighborhoodSoftmaxLoss(same_side=False)(x, labels)
    with pytest.raises(TypeError, match="same_side"):
        NeighborhoodSoftmaxLoss(same_side="no")
    with pytest.raises(ValueError, match="sides must be non-negative numbers, got -1"):
        NeighborhoodSoftmaxLoss(same_side=False)(x, labels, sides=-sides)


def test_cache_never_scores_an_anchor_against_its_own_pair() -> None:
    """Pair data passes pair ids as the cache's ids: every cached text of an anchor's own pair (its old copy
    and its partner's) is left out; the other pairs' cached texts are extra negatives."""
    from metriclearn.losses import CacheLoss

    g = torch.Generator().manual_seed(0)
    cache = CacheLoss(dim=4, size=16, temperature=0.1)
    first = torch.randn(6, 4, generator=g)  # pairs 0, 1, 2: anchors then positives
    first_ids = torch.tensor([0, 1, 2, 0, 1, 2])
    cache(first, first_ids, ids=first_ids)  # fills the cache (warm-up 0)
    batch = torch.randn(4, 4, generator=g, requires_grad=True)  # pairs 0 (again) and 3
    ids = torch.tensor([0, 3, 0, 3])
    per_anchor = CacheLoss(dim=4, size=16, temperature=0.1, reduction="none")
    per_anchor.load_state_dict(cache.state_dict())
    values = per_anchor(batch, ids, ids=ids)
    unit, cached = F.normalize(batch, dim=1), F.normalize(first, dim=1)
    for i in range(4):
        keys = [unit[j] for j in range(4) if j != i] + [cached[m] for m in range(6) if first_ids[m] != ids[i]]
        partner = unit[(i + 2) % 4]
        logits = torch.stack([unit[i] @ k for k in keys]) / 0.1
        expected = torch.logsumexp(logits, 0) - unit[i] @ partner / 0.1
        torch.testing.assert_close(values[i], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- the metrics
def test_pair_metrics_equal_sentence_transformers_information_retrieval_evaluator() -> None:
    pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.evaluation import (
            InformationRetrievalEvaluator,
        )
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    from metriclearn.metrics import pair_metrics

    rng = np.random.default_rng(0)
    n = 60
    anchors = rng.normal(size=(n, 6)).astype(np.float32)
    positives = (anchors + rng.normal(scale=1.2, size=(n, 6))).astype(np.float32)  # ranks spread over 1..60
    queries = {f"q{i:03d}": f"anchor {i}" for i in range(n)}
    corpus = {f"d{i:03d}": f"positive {i}" for i in range(n)}
    evaluator = InformationRetrievalEvaluator(
        queries, corpus, {f"q{i:03d}": {f"d{i:03d}"} for i in range(n)}, score_functions={"cos": cos_sim},
        accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10], mrr_at_k=[10], ndcg_at_k=[10], map_at_k=[10],
        show_progress_bar=False)
    table = {**{v: anchors[i] for i, v in enumerate(queries.values())},
             **{v: positives[i] for i, v in enumerate(corpus.values())}}
    evaluator.embed_inputs = lambda model, sentences, **kw: torch.from_numpy(np.stack([table[s] for s in sentences]))
    theirs = evaluator.compute_all_metrics(model=None)["cos"]
    ours = pair_metrics(anchors, positives, k=10)
    assert 0.1 < ours["recall_at_10"] < 0.95  # neither trivial nor hopeless
    expected = {"recall_at_1": theirs["recall@k"][1], "recall_at_10": theirs["recall@k"][10],
                "mrr_at_10": theirs["mrr@k"][10], "ndcg_at_10": theirs["ndcg@k"][10]}
    assert ours == pytest.approx(expected, rel=1e-6)


def test_pair_metrics_refuse_mismatched_inputs() -> None:
    from metriclearn.metrics import pair_metrics

    with pytest.raises(ValueError, match="same number of rows .pairs., got 3 and 2"):
        pair_metrics(np.ones((3, 2)), np.ones((2, 2)))


# ----------------------------------------------------------------------------------------------- CLI
FAST = ["--epochs", "2", "--batch-size", "4", "--samples-per-class", "2", "--embedding-dim", "8", "--device", "cpu", "--quiet",
        "--threads", "1", "--val-fraction", "0.3", "--finetune", "--encoder-lr", "1e-3"]


def test_train_evaluate_embed_on_pairs(tmp_path, pair_file, tiny_bert_dir) -> None:
    run = tmp_path / "run"
    result = invoke("train", "--data", pair_file, "--encoder", f"sentence:{tiny_bert_dir}", *FAST, "--out", run)
    assert result.exit_code == 0, result.output
    assert "held-out metrics (val, 7 pairs)" in result.output and "recall_at_10" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_eval"] == 7 and metrics["n_train"] == 16  # 30 % of 23 pairs held out, by whole pairs
    assert set(metrics["pairs"]) == {"recall_at_1", "recall_at_10", "mrr_at_10", "ndcg_at_10"}
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(0 <= float(r["val_mrr_at_10"]) <= 1 for r in rows)  # per-epoch validation
    assert float(rows[-1]["val_recall_at_10"]) == pytest.approx(metrics["pairs"]["recall_at_10"])
    a, p = tmp_path / "a.npy", tmp_path / "p.npy"
    result = invoke("embed", "--model", run, "--data", pair_file, "--out", a, "--positives-out", p, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.load(a).shape == np.load(p).shape == (23, 8)
    result = invoke("evaluate", "--model", run, "--data", pair_file, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "recall_at_10" in result.output
    from metriclearn.metrics import pair_metrics

    saved = json.loads((run / "evaluate.json").read_text())
    assert saved["pairs"] == pytest.approx(pair_metrics(np.load(a), np.load(p)), rel=1e-6)
    assert_one_line_error(invoke("embed", "--model", run, "--data", pair_file, "--out", a), 2, "--positives-out")
    assert_one_line_error(invoke("evaluate", "--model", run, "--data", pair_file, "--reference", pair_file), 2,
                          "--reference, --index and --layer do not apply")


def test_cache_on_pairs_receives_pair_ids_and_warms_up(tmp_path, pair_file, tiny_bert_dir, monkeypatch) -> None:
    from metriclearn.losses import CacheLoss

    seen = []
    original = CacheLoss.compute

    def spy(self, embeddings, labels, ids=None):
        seen.append((labels.tolist(), None if ids is None else ids.tolist(), int(self.filled), int(self.step)))
        return original(self, embeddings, labels, ids)

    monkeypatch.setattr(CacheLoss, "compute", spy)
    config = tmp_path / "c.toml"
    config.write_text('loss = ["neighborhood", "cache"]\n[loss_options.cache]\nsize = 64\nwarmup_steps = 3\n')
    result = invoke("train", "--data", pair_file, "--encoder", f"sentence:{tiny_bert_dir}", "--config", config,
                    *FAST, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(seen) == 2 * 4  # 16 training pairs, 4 per batch, 2 epochs
    for labels, ids, _, _ in seen:
        assert ids == labels and len(labels) == 8  # the pair ids; 4 whole pairs per batch
        assert all(labels.count(v) == 2 for v in labels)
    assert [step for *_, step in seen[:4]] == [0, 1, 2, 3] and seen[3][2] == 24  # scored from step 3 on


def test_same_side_false_from_the_config_gets_each_rows_side(tmp_path, tiny_bert_dir, monkeypatch) -> None:
    """``[loss_options.neighborhood] same_side = false`` on triplets: every batch reaches the loss with the sides
    of its rows (the anchor 0, its positive and negative 1), and class data is refused before training."""
    from metriclearn.losses import NeighborhoodSoftmaxLoss

    seen = []
    original = NeighborhoodSoftmaxLoss.compute

    def spy(self, embeddings, labels, ids=None, sides=None):
        seen.append((labels.tolist(), None if sides is None else sides.tolist()))
        return original(self, embeddings, labels, ids, sides)

    monkeypatch.setattr(NeighborhoodSoftmaxLoss, "compute", spy)
    rows = [{"anchor": f"what is a {w}?", "positive": f"a {w} is a thing called {w}",
             "negative": f"a {w} is never a {WORDS[i - 1]}"} for i, w in enumerate(WORDS)]
    config = tmp_path / "c.toml"
    config.write_text('loss = ["neighborhood"]\n[loss_options.neighborhood]\nsame_side = false\n')
    result = invoke("train", "--data", _write(tmp_path / "triplets.jsonl", rows), "--encoder",
                    f"sentence:{tiny_bert_dir}", "--config", config, *FAST, "--val-fraction", "0", "--out",
                    tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(seen) == 2 * 6  # 23 triplets, 4 a batch (the last 3), 2 epochs
    for labels, sides in seen:
        side_of = {}
        for label, side in zip(labels, sides, strict=True):
            side_of.setdefault(label, []).append(side)
        assert all(sorted(side_of[v]) == [0, 1] for v in side_of if v < 23)  # an anchor and its positive
        assert all(side_of[v] == [1] for v in side_of if v >= 23)  # a negative: the documents' side
    groups = _write(tmp_path / "groups.jsonl", [{"text": f"a {w} {k}", "group": w} for w in WORDS[:4] for k in range(4)])
    refused = invoke("train", "--data", groups, "--encoder", f"sentence:{tiny_bert_dir}", "--config", config, *FAST,
                     "--out", tmp_path / "classes")
    assert_one_line_error(refused, 1, "has same_side=False, which scores anchors against positives: it needs pair data")


def test_pair_batches_ignore_samples_per_class(tmp_path, pair_file, tiny_bert_dir) -> None:
    """--batch-size counts pairs: 5 pairs a batch trains though the default --samples-per-class (8) divides no
    batch of 5; one pair a batch is refused as a usage error, before anything is written."""
    fast = ["--epochs", "1", "--embedding-dim", "8", "--device", "cpu", "--quiet", "--threads", "1", "--finetune"]
    result = invoke("train", "--data", pair_file, "--encoder", f"sentence:{tiny_bert_dir}", *fast, "--batch-size", "5",
                    "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_train"] > 0
    one = invoke("train", "--data", pair_file, "--encoder", f"sentence:{tiny_bert_dir}", *fast, "--batch-size", "1",
                 "--out", tmp_path / "one")
    assert_one_line_error(one, 2, "batch_size (1) must hold at least 2 pairs")  # a usage error, as for classes
    assert not (tmp_path / "one").exists()


def test_pair_training_resumes_exactly(tmp_path, pair_file, tiny_bert_dir, monkeypatch) -> None:
    command = ["train", "--data", pair_file, "--encoder", f"sentence:{tiny_bert_dir}", *FAST, "--loss", "cache",
               "--checkpoint-every", "1"]
    restore = kill_train_at(monkeypatch, epoch=1, batch=2)
    assert invoke(*command, "--out", tmp_path / "r").exit_code != 0
    restore()
    assert invoke(*command, "--out", tmp_path / "r", "--resume").exit_code == 0
    assert invoke(*command, "--out", tmp_path / "straight").exit_code == 0
    a = torch.load(tmp_path / "r" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert_f32_close(json.loads((tmp_path / "r" / "metrics.json").read_text())["pairs"]["mrr_at_10"],
                     json.loads((tmp_path / "straight" / "metrics.json").read_text())["pairs"]["mrr_at_10"])


def test_finetune_pairs_example_on_a_tiny_slice(tmp_path, tiny_bert_dir, capsys) -> None:
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "finetune_pairs.py"
    assert len(example.read_text().splitlines()) < 100
    main = runpy.run_path(str(example))["main"]
    results = main(model=str(tiny_bert_dir), n_pairs=24, epochs=1, batch_size=4, out=str(tmp_path))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert results["fine_tuned"] == saved["pairs"] and saved["n_eval"] == 6  # 25 % of 24 pairs
    assert set(results["raw"]) == set(saved["pairs"]) and all(0 <= v <= 1 for v in results["raw"].values())
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == 24 and all(json.loads(line)["anchor"] and json.loads(line)["positive"] for line in lines)
    assert "6 held-out pairs, each anchor against all 6 positives" in capsys.readouterr().out


def test_pairs_with_hard_negatives_and_no_validation_split(tmp_path, tiny_bert_dir, monkeypatch) -> None:
    from metriclearn.training.objectives import Objective

    rows = [{"anchor": f"what is a {w}?", "positive": f"a {w} is a thing called {w}",
             "negative": f"a {w} is never a {WORDS[i - 1]}"} for i, w in enumerate(WORDS)]
    path = _write(tmp_path / "triplets.jsonl", rows)
    batches = []
    original = Objective.term_losses  # the loss terms' labels (the default objective's terms are computed fused)
    monkeypatch.setattr(Objective, "term_losses", lambda self, e, labels, *args, **kwargs: batches.append(
        labels.tolist()) or original(self, e, labels, *args, **kwargs))
    result = invoke("train", "--data", path, "--encoder", f"sentence:{tiny_bert_dir}", *FAST, "--val-fraction", "0",
                    "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(batches) == 6 and sum(map(len, batches)) == 3 * 23  # 4 whole triplets per batch, the last 3
    for labels in batches:  # per pair: anchor and positive share its id, its negative has an id of its own
        pairs = {v for v in labels if v < 23}
        assert all(labels.count(v) == 2 for v in pairs) and sorted(v - 23 for v in labels if v >= 23) == sorted(pairs)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["n_eval"] == 23  # measured on the training pairs, negatives aside


def test_report_on_pairs_is_refused_before_training(tmp_path, pair_file, tiny_bert_dir) -> None:
    result = invoke("train", "--data", pair_file, "--encoder", f"sentence:{tiny_bert_dir}", *FAST, "--report",
                    "--out", tmp_path / "run")
    assert_one_line_error(result, 1, "--report plots classes, and pair data has none")
    assert not (tmp_path / "run" / "log.csv").exists()  # refused before the first step


# ----------------------------------------------------------------------------------------------- torchrun
@pytest.mark.parametrize("loss", ["cache", "same_side=false"])
def test_torchrun_on_pairs_equals_one_process(tmp_path, pair_file, tiny_bert_dir, torchrun, loss) -> None:
    """Pair fine-tuning with the cache (or with the neighbourhood loss scoring anchors against positives only) on 2
    processes (each a shard of every batch; pairs may straddle the ranks; 3 pairs a batch, so the last batch of 16
    pairs is 1 pair, one text per rank) ends with one process's weights and metrics: the gathered batch, the pair
    ids, the rows' sides and the cache are the global ones. Dropout is off, so both runs compute the same function;
    the tiny BERT's unused pooler no longer stops DistributedDataParallel."""
    model = tmp_path / "bert"
    model.mkdir()
    for path in tiny_bert_dir.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    loss_config = tmp_path / "loss.toml"
    loss_config.write_text('loss = ["cache"]\n' if loss == "cache"
                      else 'loss = ["neighborhood"]\n[loss_options.neighborhood]\nsame_side = false\n')
    command = ["train", "--data", pair_file, "--encoder", f"sentence:{model}", *FAST, "--batch-size", "3",
               "--samples-per-class", "1", "--config", loss_config, "--no-amp"]  # (pairs ignore --samples-per-class)
    one = invoke(*command, "--out", tmp_path / "one")
    assert one.exit_code == 0, one.output
    done = torchrun(*command, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("held-out metrics (val, 7 pairs)") == 1  # rank 0 reports
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    from transformers import AutoModel

    start = AutoModel.from_pretrained(str(model)).state_dict()
    moved = max(float((a[k] - start[k.removeprefix("transformer.")]).abs().max()) for k in a if k.startswith("tr"))
    assert moved > 1e-3 and a.keys() == b.keys()  # 12 AdamW steps moved the transformer (seen: 3.5e-3)
    for key in a:  # the gradients are summed in another order (seen: 1e-6 apart), far below what training moved
        gap = (b[key] - a[key]).abs()
        # AdamW scales each weight's step by its own gradient's size, so a weight whose gradient is ~0 (a token
        # seen once) can take a visibly different step from a last-bit difference (seen: 1 weight of 976 704
        # 1.1e-4 apart once the cache's recentring solve is in the gradient); a wrong gradient moves them all
        assert float((gap > 3e-5).float().mean()) <= 1e-4, key
        assert float(gap.max()) <= 0.1 * moved, (key, float(gap.max()), moved)
    one_m, two_m = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert two_m["n_train"] == one_m["n_train"] == 16 and two_m["n_eval"] == 7
    assert two_m["pairs"] == pytest.approx(one_m["pairs"], abs=1e-6)  # 7 queries: a rank moves by 1/7


@pytest.mark.parametrize("same_side", [True, False])
@pytest.mark.parametrize("negatives", [False, True])
def test_first_batch_chance_level_counts_texts_per_pair(tmp_path, tiny_bert_dir, negatives, same_side) -> None:
    """A batch of B pairs holds B·w texts and each anchor has one positive: chance is log(B·w − 1), whatever
    --samples-per-class says (it said log((B − 1)/(s − 1)) before, as if the batch held B single texts). With
    same_side=False an anchor meets the B·(w − 1) documents and a positive the B anchors: the mean of the logs."""
    from metriclearn.training import HealthMonitor, TrainConfig
    from metriclearn.training.run import train_run

    rows = [{"anchor": f"what is a {w}?", "positive": f"a {w} is a thing called {w}"}
            | ({"negative": f"a {w} is never a {WORDS[i - 1]}"} if negatives else {}) for i, w in enumerate(WORDS)]
    config = TrainConfig(data=_write(tmp_path / "pairs.jsonl", rows), encoder=f"sentence:{tiny_bert_dir}",
                         loss="neighborhood", epochs=1, batch_size=6, samples_per_class=3, embedding_dim=8,
                         loss_options={} if same_side else {"neighborhood": {"same_side": False}},
                         val_fraction=0.0, device="cpu", threads=1, seed=0)
    class ChanceProbe(HealthMonitor):  # a second monitor beside the run's own (state keys must differ)
        pass

    monitor = ChanceProbe()
    train_run(config, tmp_path / "run", callbacks=[monitor], verbose=False)
    width = 3 if negatives else 2
    observed, expected = monitor.initial["neighborhood"]
    chance = math.log(6 * width - 1) if same_side else (math.log(6 * (width - 1)) + math.log(6)) / 2
    assert expected == pytest.approx(chance, rel=1e-12) and math.isfinite(observed)
