"""The training loop: exact resume, checkpoints, logs, early stopping, NaN handling, health checks."""

from __future__ import annotations

import csv
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from metriclearn.training import (
    EarlyStopping,
    HealthMonitor,
    LambdaCallback,
    Objective,
    TrainConfig,
    Trainer,
    load_run,
    resolve_device,
    train_run,
)
from metriclearn.training.objectives import lambda_loss

SMALL = dict(epochs=3, batch_size=40, samples_per_class=4, encoder="mlp:32", embedding_dim=8, device="cpu",
             lr=3e-3, val_fraction=0.25)


def _blobs(n_per_class: int = 12, classes: int = 4, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    X = (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    return X, y


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
    assert ckpt["epoch"] == 3 and "bank" in "".join(ckpt["objective"]) or ckpt["objective"]


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


def test_fit_and_embed_api_with_tuple_data() -> None:
    X, y = _blobs()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    objective = Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())})
    trainer = Trainer(model, objective, batch_size=16, samples_per_class=4, device="cpu", verbose=False)
    history = trainer.fit((X, y), (X, y), epochs=2)
    assert len(history) == 2 and history[1]["loss"] < history[0]["loss"]
    assert "val_map_at_r" in history[0] and "lr" in history[0]
    model.train()
    emb = trainer.embed(X)
    assert emb.dtype == np.float32 and emb.shape == (len(X), 4)
    assert model.training  # embed ran in eval mode and restored the previous mode
    with pytest.raises(TypeError, match="train must be a LabeledData"):
        trainer.fit(X, epochs=1)
    with pytest.raises(ValueError, match="train is empty"):
        trainer.fit((X[:0], y[:0]), epochs=1)
    with pytest.raises(ValueError, match="train has 48 samples but 3 labels"):
        trainer.fit((X, y[:3]), epochs=1)
    with pytest.raises(ValueError, match="train features contain NaN"):
        trainer.fit((np.full_like(X, np.nan), y), epochs=1)


def test_nan_loss_stops_with_clear_error() -> None:
    X, y = _blobs()
    objective = Objective({"bad": lambda_loss(lambda e, t: e.sum() * float("nan"))})
    trainer = Trainer(nn.Linear(6, 3), objective, batch_size=16, device="cpu", verbose=False)
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, step 1"):
        trainer.fit((X, y), epochs=1)


def test_health_monitor_warns_on_exploding_gradients_and_logs_norms() -> None:
    X, y = _blobs()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    objective = Objective({"big": lambda_loss(lambda e, t: 1e6 * e.pow(2).mean())})
    monitor = HealthMonitor(every=1, max_grad_norm=1.0)
    trainer = Trainer(model, objective, batch_size=16, device="cpu", verbose=False, callbacks=[monitor])
    with pytest.warns(RuntimeWarning, match="gradient norm .* exceeds 1"):
        history = trainer.fit((X, y), epochs=1)
    assert {"grad_norm", "weight_norm", "dead_relu"} <= set(history[0])
    assert 0.0 <= history[0]["dead_relu"] <= 1.0 and history[0]["weight_norm"] > 0


def test_health_monitor_first_batch_loss_check() -> None:
    X, y = _blobs()
    # an over-confident head: huge logits make the first softmax loss far above log K
    head = nn.Linear(4, 4)
    nn.init.constant_(head.weight, 0.0)
    with torch.no_grad():
        head.weight[0, 0] = 1e3
    from metriclearn.training.objectives import HeadLoss

    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.fill_(1.0)
    objective = Objective({"softmax": HeadLoss(head, nn.CrossEntropyLoss())})
    trainer = Trainer(model, objective, batch_size=16, device="cpu", verbose=False, callbacks=[HealthMonitor()])
    with pytest.warns(RuntimeWarning, match="first-batch softmax loss .* far above chance"):
        trainer.fit((X, y), epochs=1)
    observed, expected = trainer.initial_losses["softmax"]
    assert expected == pytest.approx(math.log(4)) and observed > 2 * expected


def test_health_monitor_quiet_for_sane_start() -> None:
    X, y = _blobs()
    objective = Objective({"softmax": __import__("metriclearn.training.objectives", fromlist=["x"]).build_loss(
        "softmax", 4, 4)})
    trainer = Trainer(nn.Linear(6, 4), objective, batch_size=16, device="cpu", verbose=False,
                      callbacks=[HealthMonitor()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.fit((X, y), epochs=1)
    observed, expected = trainer.initial_losses["softmax"]
    assert abs(observed - expected) / expected < 0.5


def test_early_stopping_counts_and_stops() -> None:
    stop = EarlyStopping("val_map_at_r", patience=2, mode="max")
    trainer = types.SimpleNamespace(should_stop=False, log=lambda msg: None)
    for epoch, value in enumerate([0.5, 0.6, 0.6, 0.59]):
        stop.on_epoch_end(trainer, epoch, {"val_map_at_r": value})
        assert trainer.should_stop == (epoch == 3)
    assert stop.state_dict() == {"best": 0.6, "wait": 2}
    fresh = EarlyStopping(patience=2)
    fresh.load_state_dict(stop.state_dict())
    assert fresh.wait == 2 and fresh.best == 0.6


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


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_amp_on_cuda_trains() -> None:  # pragma: no cover - GPU only
    X, y = _blobs()
    objective = Objective({"pull": lambda_loss(lambda e, t: e.float().pow(2).mean())})
    trainer = Trainer(nn.Linear(6, 4), objective, batch_size=16, device="cuda", amp=True, verbose=False)
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    history = trainer.fit((X, y), epochs=2)
    assert math.isfinite(history[-1]["loss"])


def test_overfit_batch_drives_loss_down() -> None:
    X, y = _blobs()
    from metriclearn.training.objectives import build_objective

    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 8))
    objective = build_objective([("softmax", 1.0)], 8, 4)
    trainer = Trainer(model, objective, lr=1e-2, batch_size=16, device="cpu", verbose=False)
    losses = trainer.overfit_batch((X, y), steps=100)
    assert len(losses) == 100 and losses[-1] < 0.1 * losses[0]


def test_tensorboard_logger_writes_events(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from metriclearn.training import TensorBoardLogger

    X, y = _blobs()
    logger = TensorBoardLogger(tmp_path / "tb")
    trainer = Trainer(nn.Linear(6, 3), Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())}),
                      batch_size=16, device="cpu", verbose=False, callbacks=[logger])
    trainer.fit((X, y), epochs=1)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_failing_on_fit_end_does_not_mask_the_training_error() -> None:
    X, y = _blobs()

    def broken(trainer: Trainer) -> None:
        raise RuntimeError("cannot save")

    objective = Objective({"bad": lambda_loss(lambda e, t: e.sum() * float("inf"))})
    trainer = Trainer(nn.Linear(6, 3), objective, batch_size=16, device="cpu", verbose=False,
                      callbacks=[LambdaCallback(on_fit_end=broken)])
    with pytest.warns(RuntimeWarning, match="on_fit_end failed after a training error: cannot save"):
        with pytest.raises(FloatingPointError, match="loss is inf"):
            trainer.fit((X, y), epochs=1)


def test_without_validation_split_metrics_use_the_training_data(tmp_path) -> None:
    metrics = train_run(TrainConfig(**{**SMALL, "epochs": 1, "val_fraction": 0.0}), tmp_path / "r", verbose=False)
    assert metrics["split"] == "train" and metrics["n_eval"] == 1797
    rows = list(csv.DictReader(open(tmp_path / "r" / "log.csv")))
    assert len(rows) == 1 and not any(k.startswith("val_") for k in rows[0])


def test_health_monitor_measures_dead_relu_share() -> None:
    X, y = _blobs()
    hidden = nn.Linear(6, 8)
    with torch.no_grad():
        hidden.bias[:6] = -1e4  # 6 of 8 units can never fire
        hidden.bias[6:] = 1e4  # 2 always fire
    model = nn.Sequential(hidden, nn.ReLU(), nn.Linear(8, 4))
    monitor = HealthMonitor(every=1)
    objective = Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())})
    trainer = Trainer(model, objective, lr=1e-6, batch_size=16, device="cpu", verbose=False, callbacks=[monitor])
    history = trainer.fit((X, y), epochs=1)
    assert history[0]["dead_relu"] == pytest.approx(6 / 8)


def test_tensorboard_logger_calls_with_a_stand_in_writer(monkeypatch) -> None:
    calls: list[tuple] = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("init", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    from metriclearn.training import TensorBoardLogger

    X, y = _blobs()
    trainer = Trainer(nn.Linear(6, 3), Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())}),
                      batch_size=16, device="cpu", verbose=False, callbacks=[TensorBoardLogger("tb")])
    trainer.fit((X, y), (X, y), epochs=2)
    assert calls[0] == ("init", "tb", None) and calls[-1] == ("close",)
    assert ("batch/loss", 1) in calls and ("epoch/val_map_at_r", 2) in calls
    assert sum(1 for c in calls if c[0] == "batch/loss") == trainer.global_step


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "none"])
def test_per_batch_schedules(scheduler: str) -> None:
    X, y = _blobs()
    trainer = Trainer(nn.Linear(6, 3), Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())}), lr=0.1,
                      scheduler=scheduler, batch_size=16, device="cpu", verbose=False)
    history = trainer.fit((X, y), epochs=3)
    lrs = [row["lr"] for row in history]
    if scheduler == "none":
        assert lrs == [0.1, 0.1, 0.1]
        return
    steps = 3 * len(trainer.sampler)
    assert trainer.scheduler.last_epoch == trainer.global_step == steps  # stepped once per batch
    if scheduler == "cosine":  # the last step uses lr/2 · (1 + cos(π (N-1)/N))
        assert lrs[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * (steps - 1) / steps)))
    else:  # OneCycle ends at max_lr / div_factor / final_div_factor
        assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4) and max(lrs) <= 0.1
