"""The training loop: fit/embed, NaN handling, schedules, optimisers, defaults shared with the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_f32_close, make_blobs

from metriclearn.training import LambdaCallback, Objective, Trainer, resolve_device
from metriclearn.training.objectives import build_objective, lambda_loss


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    """48 rows of 4 Gaussian classes in 6 dimensions (uneven class order: the rows are shuffled)."""
    return make_blobs({c: 12 for c in range(4)}, dim=6, spread=3.0)


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
    assert_f32_close(emb, model(torch.from_numpy(X)).detach().numpy())  # batched vs one forward pass
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


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
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


def test_python_defaults_train_the_same_run_as_the_cli_defaults(tmp_path) -> None:
    """``Trainer(model, build_objective(None, D, K))`` with no options == ``metriclearn train`` with none.

    Both sides are given only what a run needs from outside (the device, and 2 epochs to stay fast). This is
    the check that ``Trainer``'s defaults are ``TrainConfig``'s: a drifted default changes the weights.
    """
    from click.testing import CliRunner

    from metriclearn.cli import cli
    from metriclearn.data import load_data, train_val_split
    from metriclearn.encoders import build_encoder
    from metriclearn.training import seed_everything

    result = CliRunner().invoke(cli, ["train", "--epochs", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    cli_weights = torch.load(tmp_path / "r" / "model.pt", weights_only=True)["state_dict"]

    seed_everything(0)
    data = load_data("digits")
    train, val = train_val_split(data, 0.2, seed=0)
    model = build_encoder("mlp", (64,))
    trainer = Trainer(model, build_objective(None, 64, data.num_classes), device="cpu", verbose=False)
    trainer.fit(train, val, epochs=2)
    python_weights = model.state_dict()
    assert cli_weights.keys() == python_weights.keys()
    assert all(torch.equal(cli_weights[k], python_weights[k]) for k in cli_weights)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_every_optimizer_decays_weights_but_not_biases(name: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    objective = Objective({"pull": lambda_loss(lambda e, t: e.pow(2).mean())})
    trainer = Trainer(model, objective, name, lr=0.1, weight_decay=0.5, device="cpu", verbose=False)
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(groups[1]["params"]) == 4  # two biases, the LayerNorm weight and bias
    assert all(g["lr"] == 0.1 for g in groups)


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_lone_last_sample_is_passed_over_and_the_schedule_still_ends(scheduler: str) -> None:
    X, y = make_blobs({c: 11 for c in range(3)}, dim=6, spread=3.0)  # 33 = 2 · 16 + 1: epochs end with one
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    seen = []
    losses = []
    spy = LambdaCallback(on_batch_end=lambda t, b, logs: (seen.append(b), losses.append(logs["loss"])))
    trainer = Trainer(model, build_objective(None, 4, 3), lr=0.1, scheduler=scheduler, batch_size=16,
                      samples_per_class=4, device="cpu", verbose=False, callbacks=[spy])
    trainer.fit((X, y), epochs=3)  # BatchNorm would raise on a batch of one in training mode
    assert len(trainer.sampler) == 3 and seen == [0, 1] * 3 and trainer.global_step == 6
    assert trainer.scheduler.last_epoch == 6  # the whole schedule, over the steps actually taken
    assert [row["loss"] for row in trainer.history] == pytest.approx(
        [(losses[i] + losses[i + 1]) / 2 for i in (0, 2, 4)])  # the epoch loss: mean over the 2 trained batches
    last_used = trainer.history[-1]["lr"]  # the rate of the epoch's last step: the schedule's end
    expected = 0.1 / 25 / 1e4 if scheduler == "onecycle" else 0.05 * (1 + math.cos(math.pi * 5 / 6))
    assert last_used == pytest.approx(expected)


def _default_run(log_every: int, callbacks=()) -> tuple[Trainer, list[dict[str, float]]]:
    """The default objective on uneven blobs (classes of 13 / 9 / 7 / 5 / 3: batches of 16 do not divide 37)."""
    X, y = make_blobs({0: 13, 1: 9, 2: 7, 3: 5, 4: 3}, dim=6, spread=3.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    trainer = Trainer(model, build_objective(None, 4, 5), batch_size=16, samples_per_class=4, device="cpu",
                      verbose=False, callbacks=callbacks)
    trainer.log_every = log_every
    return trainer, trainer.fit((X, y), epochs=3)


def test_step_logs_read_every_step_or_every_n_steps_give_the_same_run() -> None:
    """Reading the logs off the device every step (the loop before issue 23) or every 2 or 50 steps changes
    nothing: the same weights bit for bit and the same epoch logs, per-step values passed to callbacks alike."""
    seen: dict[int, list[tuple[float, float]]] = {}
    runs = {}
    for every in (1, 2, 50):
        record = LambdaCallback(on_batch_end=lambda t, b, logs, every=every: seen.setdefault(every, []).append(
            (logs["loss"], logs["grad_norm"])))
        runs[every] = _default_run(every, [record])
    ref_trainer, ref_history = runs[1]
    assert len(seen[1]) == 9 and all(math.isfinite(v) for row in seen[1] for v in row)  # 3 batches × 3 epochs
    for every in (2, 50):
        trainer, history = runs[every]
        for mine, ref in zip(trainer.model.state_dict().values(), ref_trainer.model.state_dict().values()):
            assert torch.equal(mine, ref)
        assert [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in history] == [
            {k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")} for row in ref_history]
        assert seen[every] == seen[1]
    assert set(ref_history[0]) >= {"loss", "neighborhood", "uniformity", "grad_norm", "lr"}


def test_a_nan_loss_is_reported_at_its_own_step_when_logs_are_read_later() -> None:
    X, y = _blobs()
    calls = []

    def loss(e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return e.pow(2).mean() * (float("nan") if len(calls) == 2 else 1.0)

    trainer = Trainer(nn.Linear(6, 3), Objective({"bad": lambda_loss(loss)}), batch_size=16, device="cpu",
                      verbose=False)
    assert trainer.log_every > 3  # the NaN of step 2 is read with step 3, at the end of the epoch
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 2 \(terms: bad=nan\)"):
        trainer.fit((X, y), epochs=1)
