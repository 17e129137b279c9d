"""MetricLearningModule on uneven blobs: the same weights as metriclearn's Trainer, resume, callbacks, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("lightning", reason="needs the 'lightning' extra")

from conftest import assert_f32_close  # noqa: E402
from lightning_helpers import coded_blobs, quiet_trainer  # noqa: E402

from metriclearn.lightning import (  # noqa: E402
    DistributedClassBalancedSampler,
    HealthMonitorCallback,
    MetricLearningModule,
    MetricLearningReport,
    RetrievalValidation,
    balanced_loader,
)
from metriclearn.training import TrainConfig  # noqa: E402
from metriclearn.training.run import build_model, make_trainer  # noqa: E402

COUNTS = {0: 37, 1: 23, 2: 50, 3: 9, 4: 30}  # 149 samples: batches of 32 leave 21


def _states(encoder: torch.nn.Module, objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
            **{f"objective.{k}": v for k, v in objective.state_dict().items()}}


@pytest.mark.parametrize("loss, combine", [
    (["neighborhood", "uniformity:0.05"], "sum"),
    (["softmax", "complement"], "alternate"),  # COT: a cross-entropy step, then a complement-entropy step
    (["neighborhood", "softmax"], "pcgrad"),
    (["neighborhood", "cache:0.5", "prototype"], "sum"),  # cache buffers and EMA centroids
])
def test_module_trains_the_weights_metriclearns_trainer_trains(loss, combine) -> None:
    X, y = coded_blobs(COUNTS)
    cfg = TrainConfig(loss=loss, combine=combine, embedding_dim=6, batch_size=32, samples_per_class=4, device="cpu",
                      loss_options={"prototype": {"mode": "ema"}} if "prototype" in loss else {})
    torch.manual_seed(0)
    trainer = make_trainer(cfg, build_model(cfg, (8,)), len(COUNTS), verbose=False)
    trainer.fit((X, y), epochs=2)
    torch.manual_seed(0)
    module = MetricLearningModule.from_config(cfg, (8,), len(COUNTS))
    pl_trainer = quiet_trainer(2)
    pl_trainer.fit(module, balanced_loader(X, y, 32, 4, seed=cfg.seed))
    expected, actual = _states(trainer.model, trainer.objective), _states(module.encoder, module.objective)
    assert expected.keys() == actual.keys()
    for key in expected:  # the same operations in the same order: equal weights (up to float32 round-off)
        assert_f32_close(actual[key].double().numpy(), expected[key].double().numpy())
    assert module.batches_done == trainer.global_step == 10  # 2 epochs × ceil(149 / 32)
    steps_per_batch = len(loss) if combine == "alternate" else 1
    assert pl_trainer.global_step == 10 * steps_per_batch
    assert module.automatic_optimization == (combine == "sum")


def test_onecycle_steps_once_per_batch_to_its_end() -> None:
    X, y = coded_blobs(COUNTS)
    module = MetricLearningModule.from_config(TrainConfig(embedding_dim=6, loss=["softmax", "complement"],
                                                          combine="alternate", lr=0.01), (8,), len(COUNTS))
    lrs: list[float] = []
    from lightning.pytorch.callbacks import LambdaCallback

    record = LambdaCallback(on_train_batch_end=lambda t, m, *a: lrs.append(m.optimizers().param_groups[0]["lr"]))
    quiet_trainer(3, [record]).fit(module, balanced_loader(X, y, 32, 4))
    assert len(lrs) == 15 and max(lrs) == pytest.approx(0.01, rel=0.05)  # one step per batch, two updates each
    assert lrs.index(max(lrs)) in range(3, 6) and lrs[-1] < 0.05 * max(lrs)  # warm-up to 30 %, then annealed


def test_lone_last_sample_is_passed_over_and_shards_cover_each_batch() -> None:
    labels = np.arange(97) % 4  # 97 = 3 × 32 + 1: a last batch of one sample
    sampler = DistributedClassBalancedSampler(labels, 32, 4)
    assert len(sampler) == 3 and sum(len(b) for b in sampler) == 96
    shards = []
    for rank in range(4):
        sampler = DistributedClassBalancedSampler(np.arange(110) % 5, 30, 3, num_replicas=4, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    whole = DistributedClassBalancedSampler(np.arange(110) % 5, 30, 3)
    whole.set_epoch(2)
    for step, batch in enumerate(whole):  # every global batch, the last of 20 included, split over 4 ranks
        parts = [shard[step] for shard in shards]
        assert sorted(sum(parts, [])) == sorted(batch) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_callbacks_keep_their_state_through_a_lightning_checkpoint(tmp_path) -> None:
    from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint

    X, y = coded_blobs(COUNTS)
    Xv, yv = coded_blobs({0: 12, 1: 7, 2: 15, 3: 5, 4: 9}, seed=1)

    def callbacks(name):
        report = MetricLearningReport(Xv, yv, tmp_path / name, report_options={"tsne_iter": 250})
        return [RetrievalValidation(Xv, yv), HealthMonitorCallback(), report,
                ModelCheckpoint(tmp_path / f"{name}-ckpt", save_last=True, monitor="val_map_at_r", mode="max")]

    cfg = TrainConfig(embedding_dim=6, loss=["neighborhood", "cache:0.5"], batch_size=32, samples_per_class=4)
    torch.manual_seed(0)
    whole = MetricLearningModule.from_config(cfg, (8,), 5)
    whole_cbs = callbacks("whole")
    quiet_trainer(3, whole_cbs, enable_checkpointing=True).fit(whole, balanced_loader(X, y, 32, 4))
    torch.manual_seed(0)
    first = MetricLearningModule.from_config(cfg, (8,), 5)
    kill = LambdaCallback(on_train_epoch_end=lambda t, m: setattr(t, "should_stop", t.current_epoch == 1))
    quiet_trainer(3, [kill, *callbacks("first")], enable_checkpointing=True).fit(first, balanced_loader(X, y, 32, 4))
    assert first.batches_done == 10  # stopped after 2 of 3 epochs, as a killed run would
    torch.manual_seed(1)  # a different initialisation: everything must come from the checkpoint
    resumed = MetricLearningModule.from_config(cfg, (8,), 5)
    resumed_cbs = callbacks("first")  # the same report folder: its state_key names it
    quiet_trainer(3, resumed_cbs, enable_checkpointing=True).fit(resumed, balanced_loader(X, y, 32, 4),
                                                                 ckpt_path=tmp_path / "first-ckpt" / "last.ckpt")
    for key, value in _states(whole.encoder, whole.objective).items():  # cache buffers, optimiser, OneCycle too
        assert_f32_close(_states(resumed.encoder, resumed.objective)[key].numpy(), value.numpy())
    assert [r["epoch"] for r in resumed_cbs[0].history] == [1, 2, 3]
    map_at_r = [r["map_at_r"] for r in whole_cbs[0].history]
    assert [r["map_at_r"] for r in resumed_cbs[0].history] == pytest.approx(map_at_r)
    assert resumed_cbs[1].initial == whole_cbs[1].initial and set(whole_cbs[1].initial) == {"neighborhood", "cache"}
    assert resumed_cbs[2].movie.epochs == [1, 2, 3]  # the movie holds the epochs before the checkpoint
    written = {p.name for p in (tmp_path / "first").iterdir()}
    assert {"report.html", "explorer.html", "metrics.json", "tsne.png", "centroids.gif"} <= written
    assert resumed.batches_done == 15
    refused = MetricLearningReport(Xv, yv, tmp_path / "first", report_options={"tsne_iter": 250})
    with pytest.raises(ValueError, match="already holds a metriclearn report; pass overwrite=True"):
        quiet_trainer(1, [refused]).fit(MetricLearningModule.from_config(cfg, (8,), 5), balanced_loader(X, y, 32, 4))
    assert refused.movie is not None and len(refused.movie) == 0  # refused before any training


def test_health_monitor_warns_on_a_first_batch_far_above_chance() -> None:
    X, y = coded_blobs(COUNTS)
    module = MetricLearningModule.from_config(TrainConfig(embedding_dim=6, loss=["softmax"]), (8,), 5)
    torch.nn.init.constant_(module.objective.terms["softmax"].head.weight, 0.0)
    with torch.no_grad():
        module.objective.terms["softmax"].head.bias.copy_(torch.tensor([60.0, 0, 0, 0, 0]))  # sure of class 0
    monitor = HealthMonitorCallback()
    with pytest.warns(RuntimeWarning, match="far above chance"):
        quiet_trainer(1, [monitor]).fit(module, balanced_loader(X, y, 32, 4))
    observed, expected = monitor.initial["softmax"]
    assert expected == pytest.approx(np.log(5)) and observed > 2 * expected


def test_bad_arguments_name_themselves() -> None:
    objective = MetricLearningModule.from_config(TrainConfig(embedding_dim=4), (8,), 3).objective
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module, got str"):
        MetricLearningModule("mlp", objective)
    with pytest.raises(TypeError, match="objective must be a metriclearn.training.Objective, got Linear"):
        MetricLearningModule(torch.nn.Linear(8, 4), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="scheduler"):
        MetricLearningModule(torch.nn.Linear(8, 4), objective, scheduler="exponential")
    with pytest.raises(ValueError, match="lr"):
        MetricLearningModule(torch.nn.Linear(8, 4), objective, lr=-1.0)
    with pytest.raises(ValueError, match="X has 3 samples but y has 2 labels"):
        RetrievalValidation(np.zeros((3, 2), np.float32), [0, 1])
    module = MetricLearningModule(torch.nn.Linear(8, 4), objective)
    with pytest.raises(TypeError, match="a batch must be"):
        module.training_step(torch.zeros(4, 8), 0)


def test_without_lightning_the_import_says_how_to_install_it() -> None:
    code = "import sys; sys.modules['lightning'] = None; import metriclearn.lightning"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: metriclearn.lightning needs PyTorch Lightning") and \
        "pip install 'metriclearn[lightning]'" in last


def test_a_nan_loss_stops_training_with_the_terms_named() -> None:
    from metriclearn.training import Objective
    from metriclearn.training.objectives import lambda_loss

    X, y = coded_blobs(COUNTS)
    objective = Objective({"pull": lambda_loss(lambda e, t: (e * e).sum() * float("nan"))})
    module = MetricLearningModule(torch.nn.Linear(8, 4), objective)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, batch 1 \(terms: pull=nan\)"):
        quiet_trainer(1).fit(module, balanced_loader(X, y, 32, 4))
