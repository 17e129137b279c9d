"""Interchange: a Lightning checkpoint → a metriclearn run directory the CLI reads, and a run → the module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("lightning", reason="needs the 'lightning' extra")

from conftest import assert_f32_close, assert_one_line_error, invoke, make_blobs  # noqa: E402
from lightning_helpers import quiet_trainer  # noqa: E402

from metriclearn.lightning import MetricLearningModule, balanced_loader, export_run  # noqa: E402
from metriclearn.training import TrainConfig, load_run  # noqa: E402


@pytest.fixture(scope="module")
def cot_checkpoint(tmp_path_factory):
    """A COT-trained (softmax then complement steps) module on uneven string-labelled blobs, and its checkpoint."""
    tmp = tmp_path_factory.mktemp("cot")
    X, labels = make_blobs({"ant": 41, "bee": 17, "cat": 33, "dog": 25}, dim=8)
    classes = sorted(set(labels.tolist()))
    y = np.searchsorted(classes, labels)
    np.savez(tmp / "train.npz", X=X[:80], y=labels[:80])
    np.savez(tmp / "test.npz", X=X[80:], y=labels[80:])
    cfg = TrainConfig(loss=["softmax", "complement"], combine="alternate", embedding_dim=6, batch_size=24,
                      samples_per_class=4)
    torch.manual_seed(0)
    module = MetricLearningModule.from_config(cfg, (8,), len(classes), classes=classes)
    trainer = quiet_trainer(2)
    trainer.fit(module, balanced_loader(X[:80], y[:80], 24, 4))
    trainer.save_checkpoint(tmp / "cot.ckpt")
    return tmp, module, X


def test_exported_run_is_read_by_embed_index_build_and_second_opinion(cot_checkpoint) -> None:
    tmp, module, X = cot_checkpoint
    run = export_run(tmp / "cot.ckpt", tmp / "run")
    assert json.loads((run / "classes.json").read_text()) == ["ant", "bee", "cat", "dog"]
    assert load_run(run).config["combine"] == "alternate"
    result = invoke("embed", "--model", run, "--data", tmp / "test.npz", "--out", tmp / "test_emb.npy")
    assert result.exit_code == 0, result.output
    assert_f32_close(np.load(tmp / "test_emb.npy"), module.embed(X[80:]))  # the module's own embeddings
    result = invoke("index", "build", "--model", run, "--data", tmp / "train.npz", "--out", tmp / "index")
    assert result.exit_code == 0, result.output
    result = invoke("second-opinion", "--model", run, "--cache", tmp / "train.npz", "--data", tmp / "test.npz",
                    "--out", tmp / "proba.npy")
    assert result.exit_code == 0, result.output
    proba = np.load(tmp / "proba.npy")
    assert proba.shape == (36, 4) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_a_metriclearn_run_loads_into_the_module_and_trains_on(tmp_path) -> None:
    X, labels = make_blobs({3: 30, 7: 22, 9: 41}, dim=8)
    np.savez(tmp_path / "data.npz", X=X, y=labels)
    result = invoke("train", "--data", tmp_path / "data.npz", "--loss", "softmax", "--loss", "neighborhood",
                    "--epochs", 1, "--batch-size", 24, "--embedding-dim", 6, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    module = MetricLearningModule.from_run(tmp_path / "run", lr=1e-3)
    assert module.classes == [3, 7, 9] and module.lr == 1e-3 and module.prepared
    assert_f32_close(module.embed(X), run.embed(tmp_path / "data.npz").embeddings)
    head = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["head"]
    assert torch.equal(module.objective.terms["softmax"].head.weight, head["weight"])
    standardize = module.encoder.standardize.state_dict()
    y = np.searchsorted([3, 7, 9], labels)
    trainer = quiet_trainer(1)
    trainer.fit(module, balanced_loader(X, y, 24, 4))
    assert all(torch.equal(v, module.encoder.standardize.state_dict()[k]) for k, v in standardize.items())  # kept
    trainer.save_checkpoint(tmp_path / "more.ckpt")
    again = export_run(tmp_path / "more.ckpt", tmp_path / "run2")
    assert json.loads((again / "classes.json").read_text()) == [3, 7, 9]
    assert_f32_close(load_run(again).embed(tmp_path / "data.npz").embeddings, module.embed(X))


def test_export_refuses_what_it_cannot_write_and_leaves_nothing(cot_checkpoint, tmp_path) -> None:
    tmp, _, _ = cot_checkpoint
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((tmp / "cot.ckpt").read_bytes()[:500])
    with pytest.raises(ValueError, match="broken.ckpt: not a readable Lightning checkpoint"):
        export_run(broken, tmp_path / "out")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0}, foreign)
    with pytest.raises(ValueError, match="not a checkpoint of metriclearn.lightning.MetricLearningModule"):
        export_run(foreign, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        export_run(tmp_path / "missing.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty and was not written by metriclearn"):
        export_run(tmp / "cot.ckpt", tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    export_run(tmp / "cot.ckpt", tmp_path / "twice")
    with pytest.raises(ValueError, match="overwrite=True"):
        export_run(tmp / "cot.ckpt", tmp_path / "twice")
    (tmp_path / "twice" / "notes.txt").write_text("mine")
    assert export_run(tmp / "cot.ckpt", tmp_path / "twice", overwrite=True) == tmp_path / "twice"
    assert (tmp_path / "twice" / "notes.txt").read_text() == "mine"  # only what the export wrote is replaced


def test_a_module_without_a_spec_encoder_says_why_it_cannot_be_exported(tmp_path) -> None:
    from metriclearn.training import build_objective

    module = MetricLearningModule(torch.nn.Linear(8, 4), build_objective([("neighborhood", 1.0)], 4, 3))
    X, labels = make_blobs({0: 20, 1: 14, 2: 17}, dim=8)
    trainer = quiet_trainer(1)
    trainer.fit(module, balanced_loader(X, labels.astype(np.int64), 16, 4))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="not built by metriclearn.encoders.build_encoder"):
        export_run(tmp_path / "plain.ckpt", tmp_path / "out")


def test_the_cli_refuses_a_broken_export_in_one_line(cot_checkpoint, tmp_path) -> None:
    tmp, _, _ = cot_checkpoint
    run = export_run(tmp / "cot.ckpt", tmp_path / "run")
    (run / "model.pt").write_bytes(b"not a model")
    result = invoke("embed", "--model", run, "--data", tmp / "test.npz", "--out", tmp_path / "e.npy")
    assert_one_line_error(result, 1, "model.pt")
