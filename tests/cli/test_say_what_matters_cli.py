"""Issue #19 item 5: with labels, ``classify`` and ``second-opinion`` print accuracy and recall per class."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import invoke, make_blobs

COUNTS = {"ant": 50, "bee": 23, "cat": 37}  # uneven on purpose


@pytest.fixture
def index_and_queries(tmp_path):
    x, y = make_blobs(COUNTS, dim=5, seed=0, spread=2.0)
    np.save(tmp_path / "e.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--labels", tmp_path / "y.npy",
                  "--out", tmp_path / "idx").exit_code == 0
    q, yq = make_blobs({"ant": 9, "bee": 14, "cat": 5, "dog": 3}, dim=5, seed=1, spread=2.0)  # dog: unseen
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "yq.npy", yq)
    return tmp_path, yq


def test_classify_prints_accuracy_and_recall_by_class(index_and_queries) -> None:
    root, yq = index_and_queries
    result = invoke("classify", "--index", root / "idx", "--queries", root / "q.npy", "--labels", root / "yq.npy",
                    "--method", "knn", "--k", "5", "--out", root / "p.npy")
    assert result.exit_code == 0, result.output
    predicted = np.load(root / "p.npy")
    accuracy = float(np.mean(predicted == yq))
    assert f"accuracy {accuracy:.4f} on 31 labelled rows (3 of a class the classifier does not know: dog)" \
        in result.output
    recalls = dict(re.findall(r"(\w+) ([01]\.\d{3}) \(\d+ rows?\)", result.output.splitlines()[-1]))
    assert set(recalls) == {"ant", "bee", "cat"}
    for label, value in recalls.items():
        assert float(value) == pytest.approx(np.mean(predicted[yq == label] == label), abs=5e-4)
    listed = [float(v) for v in recalls.values()]
    assert listed == sorted(listed)  # lowest first
    without = invoke("classify", "--index", root / "idx", "--queries", root / "q.npy", "--method", "knn",
                     "--out", root / "p2.npy")
    assert without.exit_code == 0 and "labelled rows" not in without.output


def test_second_opinion_features_form_prints_both_accuracies(index_and_queries) -> None:
    root, yq = index_and_queries
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=len(yq)).astype(np.float32)  # a poor model
    np.save(root / "probs.npy", probs)
    result = invoke("second-opinion", "--index", root / "idx", "--features", root / "q.npy", "--probs",
                    root / "probs.npy", "--labels", root / "yq.npy", "--out", root / "b.npy")
    assert result.exit_code == 0, result.output
    classes = np.array(sorted(COUNTS))
    model = np.mean(classes[probs.argmax(1)] == yq)
    blend = np.mean(classes[np.load(root / "b.npy").argmax(1)] == yq)
    assert f"accuracy on 31 labelled rows: model {model:.4f}, second opinion {blend:.4f}" in result.output
    assert "second opinion's recall by class, lowest first: " in result.output


def _spoil_last_epoch(monkeypatch, epochs: int) -> None:
    """Make the next ``train`` collapse the model's weights at the start of its last epoch (a bad last epoch)."""
    import torch

    from metriclearn.training import LambdaCallback, run

    original = run.train_run

    def spoiled(config, out_dir, resume=False, callbacks=(), verbose=True, overwrite=False):
        def scramble(trainer, epoch):
            if epoch == epochs - 1:
                with torch.no_grad():  # every weight matrix of rank 1: the embedding sees one direction of x
                    for p in trainer.model.parameters():
                        if p.dim() == 2:
                            p.copy_(p[:1].expand_as(p))

        return original(config, out_dir, resume, [LambdaCallback(on_epoch_start=scramble)], verbose, overwrite)

    monkeypatch.setattr(run, "train_run", spoiled)


@pytest.mark.parametrize("restore", [True, False])
def test_train_keeps_the_best_epoch_and_warns_about_a_worse_last_one(tmp_path, monkeypatch, restore) -> None:
    import json

    import torch

    x, y = make_blobs({"a": 40, "b": 27, "c": 33, "d": 21}, dim=6, seed=2, spread=3.0)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    _spoil_last_epoch(monkeypatch, epochs=3)
    out = tmp_path / "r"
    result = invoke("train", "--data", tmp_path / "d.npz", "--epochs", 3, "--batch-size", 24, "--encoder", "mlp:16",
                    "--embedding-dim", 4, "--device", "cpu", "--quiet", "--out", out,
                    *([] if restore else ["--no-restore-best"]))
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning: the last epoch's")]
    assert len(warning) == 1 and "by more than noise" in warning[0]
    assert ("holds the best epoch's weights" if restore else "holds the last epoch's weights") in warning[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and metrics["restored_best"] is restore
    model = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    kept = torch.load(out / "checkpoints" / ("best.pt" if restore else "last.pt"), weights_only=True)["model"]
    assert all(torch.equal(model[k], kept[k]) for k in model)
    if restore:  # the final metrics are the best epoch's: the same MAP@R as its validation line in log.csv
        import csv

        with open(out / "log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        best_logged = float(rows[metrics["best_epoch"] - 1]["val_map_at_r"])
        assert metrics["retrieval"]["map_at_r"] == pytest.approx(best_logged, rel=1e-5)
        assert metrics["best_val_map_at_r"] == pytest.approx(best_logged, rel=1e-6)
