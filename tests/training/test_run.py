"""Run directories: train_run, exact resume of a run, load_run, the overfit check, data checks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from metriclearn.training import LambdaCallback, TrainConfig, Trainer, load_run, train_run
from metriclearn.training.run import overfit_batch_check

SMALL = dict(epochs=3, batch_size=40, samples_per_class=4, encoder="mlp:32", embedding_dim=8, device="cpu",
             lr=3e-3, val_fraction=0.25)


class _Kill(Exception):
    pass


def _kill_at(epoch: int, batch: int) -> LambdaCallback:
    def on_batch_end(trainer: Trainer, b: int, logs: dict) -> None:
        if trainer.epoch == epoch and b == batch:
            raise _Kill(f"killed in epoch {epoch + 1}")

    return LambdaCallback(on_batch_end=on_batch_end)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("losses", [["neighborhood", "cache:0.5", "softmax:0.5", "prototype:0.2"]])
def test_resume_after_kill_gives_identical_weights(tmp_path, losses) -> None:
    cfg = TrainConfig(**SMALL, loss=losses, loss_options={"cache": {"size": 64}})
    straight = train_run(cfg, tmp_path / "straight", verbose=False)
    with pytest.raises(_Kill):
        train_run(cfg, tmp_path / "killed", callbacks=[_kill_at(epoch=1, batch=2)], verbose=False)
    assert not (tmp_path / "killed" / "model.pt").exists()
    rows = list(csv.DictReader(open(tmp_path / "killed" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1"]  # the crash left a valid log of the finished epoch
    resumed = train_run(TrainConfig.from_toml(tmp_path / "killed" / "config.toml"), tmp_path / "killed",
                        resume=True, verbose=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert resumed["retrieval"] == straight["retrieval"]
    rows = list(csv.DictReader(open(tmp_path / "killed" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["global_step"] == 3 * 34
    assert int(ckpt["objective"]["terms.cache.filled"]) == 64  # the cache's state travelled with the run


def test_resume_mid_epoch_from_step_checkpoint(tmp_path) -> None:
    cfg = TrainConfig(**{**SMALL, "checkpoint_every": 5}, loss=["neighborhood", "cache:0.5"],
                      loss_options={"cache": {"size": 64}})
    train_run(cfg, tmp_path / "straight", verbose=False)
    with pytest.raises(_Kill):  # 34 batches per epoch: killed at step 42, the last checkpoint is step 40
        train_run(cfg, tmp_path / "killed", callbacks=[_kill_at(epoch=1, batch=7)], verbose=False)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert state["global_step"] == 40 and state["epoch"] == 1 and state["epoch_progress"]["count"] == 6
    train_run(cfg, tmp_path / "killed", resume=True, verbose=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight = list(csv.DictReader(open(tmp_path / "straight" / "log.csv")))
    resumed = list(csv.DictReader(open(tmp_path / "killed" / "log.csv")))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # epoch 2 logged whole


def test_run_directory_contents_and_load_run(tmp_path) -> None:
    metrics = train_run(TrainConfig(**SMALL), tmp_path / "run", verbose=False)
    for name in ("model.pt", "config.toml", "classes.json", "metrics.json", "log.csv", "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).exists(), name
    model, config, classes = load_run(tmp_path / "run")
    assert not model.training and config["epochs"] == 3 and classes == list(range(10))
    assert 0 < metrics["retrieval"]["precision_at_1"] <= 1 and metrics["n_eval"] == 450
    with pytest.raises(ValueError, match="already holds a metriclearn run; pass --resume to continue it or --overwrite"):
        train_run(TrainConfig(**SMALL), tmp_path / "run", verbose=False)


def test_load_run_rejects_missing_and_damaged(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nope")
    train_run(TrainConfig(**{**SMALL, "epochs": 1}), tmp_path / "run", verbose=False)
    (tmp_path / "run" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.pt: not a readable metriclearn model"):
        load_run(tmp_path / "run")


def test_early_stopping_in_a_run_and_plateau_scheduler(tmp_path) -> None:
    cfg = TrainConfig(**{**SMALL, "epochs": 6, "lr": 1e-9, "patience": 1, "scheduler": "plateau", "monitor": "loss"})
    metrics = train_run(cfg, tmp_path / "run", verbose=False)
    assert metrics["epochs"] < 6  # the loss cannot improve with lr=1e-9 for long


def test_checkpoints_load_weights_only_and_hold_full_state(tmp_path) -> None:
    train_run(TrainConfig(**{**SMALL, "epochs": 1, "loss": ["neighborhood", "cache:0.5"]}), tmp_path / "r",
              verbose=False)
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "objective", "optimizer", "scheduler", "sampler", "rng", "epoch", "callbacks"} <= set(state)
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert any("cache" in k for k in state["objective"])


def test_without_validation_split_metrics_use_the_training_data(tmp_path) -> None:
    metrics = train_run(TrainConfig(**{**SMALL, "epochs": 1, "val_fraction": 0.0}), tmp_path / "r", verbose=False)
    assert metrics["split"] == "train" and metrics["n_eval"] == 1797
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv")))
    assert len(rows) == 1 and not any(k.startswith("val_") for k in rows[0])




def test_overfit_batch_check_passes_a_sound_setup_and_fails_a_broken_one() -> None:
    good = overfit_batch_check(TrainConfig(encoder="mlp:32", device="cpu", lr=3e-3), steps=60, verbose=False)
    assert good.passed and good.last <= 0.1 * good.first and good.steps == 60
    assert str(good).startswith("overfit-batch: PASS: loss ") and "on one batch of 128" in str(good)
    frozen = overfit_batch_check(TrainConfig(encoder="mlp:32", device="cpu", lr=1e-9), steps=20, verbose=False)
    assert not frozen.passed and frozen.last == pytest.approx(frozen.first, rel=1e-3)


def test_data_too_small_to_evaluate_is_refused_before_training(tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "few.npz", X=rng.normal(size=(12, 3)).astype(np.float32), y=np.repeat(np.arange(6), 2))
    config = TrainConfig(data=str(tmp_path / "few.npz"), batch_size=4, samples_per_class=2, encoder="mlp:8",
                         embedding_dim=4, device="cpu", val_fraction=0.5)
    with pytest.raises(ValueError, match=r"validation split \(6 samples\) has no class with 2 or more samples"):
        train_run(config, tmp_path / "r", verbose=False)
    assert not (tmp_path / "r").exists()
    np.savez(tmp_path / "one.npz", X=rng.normal(size=(6, 3)).astype(np.float32), y=np.zeros(6, np.int64))
    with pytest.raises(ValueError, match="one.npz: needs at least 2 classes, found 1"):
        train_run(config.replace(data=str(tmp_path / "one.npz")), tmp_path / "r", verbose=False)


def test_only_rank_0_claims_and_writes_the_run_folder(tmp_path, monkeypatch) -> None:
    """Under torchrun every rank runs train_run; the others neither lock nor write (rank 0 does both)."""
    from metriclearn import _distributed
    from metriclearn.training import distributed

    def fake_rank(r: int) -> None:  # the helpers' home and the trainer's import of them
        for module in (_distributed, distributed):
            monkeypatch.setattr(module, "rank", lambda: r)

    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("rank 0 would refuse this folder")
    fake_rank(1)
    metrics = train_run(TrainConfig(**{**SMALL, "epochs": 1}), out, verbose=False)
    assert metrics == {} and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    fake_rank(0)
    with pytest.raises(ValueError, match="is not empty and was not written by metriclearn"):
        train_run(TrainConfig(**{**SMALL, "epochs": 1}), out, verbose=False)
