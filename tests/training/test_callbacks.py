"""Callbacks: health checks, early stopping, TensorBoard/CSV logging, failure handling, state keys."""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_blobs

from metriclearn.training import (
    CSVLogger,
    EarlyStopping,
    HealthMonitor,
    LambdaCallback,
    ModelCheckpoint,
    Objective,
    Trainer,
)
from metriclearn.training.objectives import build_objective, lambda_loss


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    """48 rows of 4 Gaussian classes in 6 dimensions (uneven class order: the rows are shuffled)."""
    return make_blobs({c: 12 for c in range(4)}, dim=6, spread=3.0)


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
    monitor = trainer.callbacks[0]
    with pytest.warns(RuntimeWarning, match="first-batch softmax loss .* far above chance"):
        trainer.fit((X, y), epochs=1)
    observed, expected = monitor.initial["softmax"]
    assert expected == pytest.approx(math.log(4)) and observed > 2 * expected


def test_health_monitor_quiet_for_sane_start() -> None:
    X, y = _blobs()
    objective = build_objective([("softmax", 1.0), ("neighborhood", 1.0)], 4, 4)
    monitor = HealthMonitor()
    first: dict[str, float] = {}
    record = LambdaCallback(on_batch_end=lambda t, b, logs: first or first.update(logs))
    trainer = Trainer(nn.Linear(6, 4), objective, batch_size=16, samples_per_class=4, device="cpu",
                      verbose=False, callbacks=[record, monitor])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.fit((X, y), epochs=1)
    # the monitor read each term's first-step loss from the logs, against log K and log((B-1)/(M-1))
    assert monitor.initial["softmax"] == (first["softmax"], pytest.approx(math.log(4)))
    assert monitor.initial["neighborhood"] == (first["neighborhood"], pytest.approx(math.log(15 / 3)))
    for observed, expected in monitor.initial.values():  # within the monitor's tolerance: (1 + 1) x chance
        assert observed <= 2 * expected


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


def test_tensorboard_logger_writes_events(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from metriclearn.training import TensorBoardLogger

    X, y = _blobs()
    logger = TensorBoardLogger(tmp_path / "tb")
    trainer = Trainer(nn.Linear(6, 3), Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())}),
                      batch_size=16, device="cpu", verbose=False, callbacks=[logger])
    trainer.fit((X, y), epochs=1)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


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


def test_failing_on_fit_end_does_not_mask_the_training_error() -> None:
    X, y = _blobs()

    def broken(trainer: Trainer) -> None:
        raise RuntimeError("cannot save")

    objective = Objective({"bad": lambda_loss(lambda e, t: e.sum() * float("inf"))})
    trainer = Trainer(nn.Linear(6, 3), objective, batch_size=16, device="cpu", verbose=False,
                      callbacks=[LambdaCallback(on_fit_end=broken)])
    with pytest.warns(RuntimeWarning, match="on_fit_end failed after a training error: cannot save"):
        with pytest.raises(FloatingPointError, match="loss is -?inf at epoch 1, step 1"):
            trainer.fit((X, y), epochs=1)




def test_csv_logger_keeps_only_epochs_up_to_the_resumed_one(tmp_path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("epoch,step,loss\n1,3,0.5\n2,6,0.25\n3,9,0.125\n")
    logger = CSVLogger(path)
    trainer = types.SimpleNamespace(epoch=2, global_step=6, is_main_process=True)
    logger.on_fit_start(trainer)
    assert logger.rows == [{"epoch": 1, "step": 3, "loss": 0.5}, {"epoch": 2, "step": 6, "loss": 0.25}]
    trainer.global_step = 9
    logger.on_epoch_end(trainer, 2, {"loss": 0.2, "val_map_at_r": 0.75})
    assert path.read_text() == "epoch,step,loss,val_map_at_r\n1,3,0.5,\n2,6,0.25,\n3,9,0.2,0.75\n"


def test_state_keys_name_the_settings_and_lambda_hooks_are_checked() -> None:
    assert HealthMonitor().state_key == "HealthMonitor"
    assert EarlyStopping("val_map_at_r", mode="max").state_key == "EarlyStopping{'monitor': 'val_map_at_r', 'mode': 'max'}"
    assert ModelCheckpoint("x", "loss", "min").state_key == "ModelCheckpoint{'monitor': 'loss', 'mode': 'min'}"
    with pytest.raises(ValueError, match="unknown callback hook 'on_step'"):
        LambdaCallback(on_step=lambda *a: None)


def test_model_checkpoint_writes_best_only_on_improvement(tmp_path) -> None:
    checkpoint = ModelCheckpoint(tmp_path, monitor="val_map_at_r", mode="max")
    saved = []
    trainer = types.SimpleNamespace(is_main_process=True, state_dict=lambda: {"n": len(saved)})
    checkpoint.save = lambda path, state: saved.append((path.name, state["n"]))  # type: ignore[method-assign]
    for epoch, value in enumerate([0.5, 0.4, 0.6]):
        checkpoint.on_epoch_end(trainer, epoch, {"val_map_at_r": value})
    assert [name for name, _ in saved] == ["best.pt", "last.pt", "last.pt", "best.pt", "last.pt"]
    assert checkpoint.best == 0.6 and checkpoint.state_dict() == {"best": 0.6}
