"""`metriclearn train / embed / evaluate`: run directories, config files, resume, errors and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import invoke as _invoke

FAST = ["--epochs", "2", "--batch-size", "40", "--encoder", "mlp:32", "--embedding-dim", "8", "--device", "cpu",
        "--quiet"]


def test_train_with_defaults_writes_timestamped_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast.toml").write_text("epochs = 2\nencoder = \"mlp:32\"\n")
    result = _invoke("train", "--config", "fast.toml", "--quiet")
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    for name in ("model.pt", "config.toml", "classes.json", "metrics.json", "log.csv"):
        assert (runs[0] / name).exists()
    assert "held-out metrics" in result.output and "map_at_r" in result.output
    payload = torch.load(runs[0] / "model.pt", weights_only=True)
    assert payload["encoder"] == "mlp:32" and payload["input_shape"] == [64]


def test_flags_override_config_file_and_resolved_config_is_written(tmp_path) -> None:
    (tmp_path / "c.toml").write_text('epochs = 5\nlr = 0.01\nloss = ["snn"]\n[loss_options.snn]\ntemperature = 0.5\n')
    result = _invoke("train", "--config", str(tmp_path / "c.toml"), *FAST, "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r" / "config.toml").read_text()
    assert "epochs = 2" in text and "lr = 0.01" in text and 'loss = [\n    "snn",\n]' in text
    assert "temperature = 0.5" in text
    assert len((tmp_path / "r" / "log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_same_seed_same_model_on_cpu(tmp_path) -> None:
    for name in ("a", "b"):
        assert _invoke("train", *FAST, "--seed", "3", "--out", str(tmp_path / name)).exit_code == 0
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_via_cli(tmp_path, monkeypatch) -> None:
    from metriclearn.training import LambdaCallback, run

    out = tmp_path / "r"
    original = run.train_run

    def killed(config, out_dir, resume=False, callbacks=(), verbose=True):
        def stop(trainer, batch, logs):
            if trainer.epoch == 1:
                raise KeyboardInterrupt

        return original(config, out_dir, resume, [LambdaCallback(on_batch_end=stop)], verbose)

    monkeypatch.setattr(run, "train_run", killed)
    result = _invoke("train", *FAST, "--out", str(out))
    assert result.exit_code != 0 and not (out / "model.pt").exists()
    monkeypatch.setattr(run, "train_run", original)
    result = _invoke("train", "--resume", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    bad = _invoke("train", "--resume", "--out", str(out), "--epochs", "9")
    assert bad.exit_code == 2 and "drop --epochs" in bad.output
    assert _invoke("train", "--resume").exit_code == 2


def test_embed_and_evaluate(tmp_path) -> None:
    run_dir = tmp_path / "r"
    assert _invoke("train", *FAST, "--out", str(run_dir)).exit_code == 0
    result = _invoke("embed", "--model", str(run_dir), "--data", "digits", "--out", str(tmp_path / "e.npy"))
    assert result.exit_code == 0, result.output
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (1797, 8) and emb.dtype == np.float32
    from metriclearn.data import load_data
    from metriclearn.training import load_run

    with torch.no_grad():
        want = load_run(run_dir).model(torch.from_numpy(load_data("digits").X)).numpy()
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)  # the run's model, applied to every row in order
    result = _invoke("evaluate", "--model", str(run_dir), "--data", "digits", "--reference", "digits", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    from sklearn.datasets import load_digits

    from metriclearn.metrics import retrieval_metrics

    digits = load_digits().target
    assert metrics["retrieval"] == pytest.approx(retrieval_metrics(emb, digits), abs=1e-6)
    assert metrics["knn_accuracy_k5"] == pytest.approx(retrieval_metrics(emb, digits, emb, digits)["knn_accuracy"])
    assert metrics["data"]["seen_classes"] == list(range(10)) and metrics["data"]["unseen_classes"] == []
    assert json.loads((run_dir / "evaluate.json").read_text()) == metrics
    np.savez(tmp_path / "odd.npz", X=np.zeros((3, 64), np.float32), y=np.array([1, 42, 2]))
    np.savez(tmp_path / "wide.npz", X=np.zeros((3, 30), np.float32), y=np.array([1, 2, 2]))
    bad = _invoke("evaluate", "--model", str(run_dir), "--data", str(tmp_path / "odd.npz"))  # 42: new, welcome
    assert bad.exit_code == 1 and "odd.npz: no class has two or more rows" in bad.output  # but one row per class
    bad = _invoke("embed", "--model", str(run_dir), "--data", str(tmp_path / "wide.npz"), "--out", "x.npy")
    assert bad.exit_code == 1 and "samples have shape (30,) but the model" in bad.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "--loss", "triplet"], 2, "loss name must be one of"),
        (["train", "--epochs", "0"], 2, "epochs must be a positive integer, got 0"),
        (["train", "--data", "missing.npz", "--epochs", "1"], 1, "missing.npz"),
        (["embed", "--model", "nowhere", "--data", "digits", "--out", "x.npy"], 1, "nowhere"),
        (["embed", "--model", "nowhere", "--data", "digits", "--out", "x.txt"], 2, "must end in .npy"),
        (["train", "--device", "tpu"], 2, "tpu"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(tmp_path, monkeypatch, args, code, message) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke(*args)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_unknown_config_key_is_one_line(tmp_path) -> None:
    (tmp_path / "c.toml").write_text("epoch = 3\n")
    result = _invoke("train", "--config", str(tmp_path / "c.toml"))
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error:") and "unknown config key 'epoch'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_overfit_batch_reports_pass(tmp_path) -> None:
    result = _invoke("train", "--overfit-batch", "--encoder", "mlp:32", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "overfit-batch: PASS" in result.output


def test_report_flag_calls_reports_each_epoch_and_at_the_end(tmp_path, monkeypatch) -> None:
    import metriclearn.reports as reports

    calls: dict[str, list] = {"add": [], "save": [], "write_report": []}

    class FakeMovie:
        def __init__(self, classes=None, seed=0):
            assert classes == list(range(10))

        def add(self, epoch, embeddings, labels):
            calls["add"].append((epoch, embeddings.shape, len(labels)))

        def save(self, out_dir):
            calls["save"].append(out_dir)

    def fake_write_report(embeddings, labels, out_dir, method="both", classes=None, config=None):
        calls["write_report"].append((embeddings.shape, out_dir, classes, config["epochs"]))
        return {}

    monkeypatch.setattr(reports, "CentroidMovie", FakeMovie, raising=False)
    monkeypatch.setattr(reports, "write_report", fake_write_report, raising=False)
    result = _invoke("train", *FAST, "--report", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls["add"]] == [1, 2] and calls["add"][0][1] == (360, 8)
    assert calls["save"] == [tmp_path / "r" / "report"]
    assert calls["write_report"] == [((360, 8), tmp_path / "r" / "report", list(range(10)), 2)]


def test_every_config_key_has_a_flag() -> None:
    from metriclearn.cli.train import train
    from metriclearn.training import TrainConfig

    flags = {p.name for p in train.params}
    assert set(TrainConfig.keys()) - {"loss_options"} <= flags  # loss knobs live in [loss_options.NAME]


def test_report_with_the_real_centroid_movie(tmp_path, monkeypatch) -> None:
    import metriclearn.reports as reports

    seen = {}
    monkeypatch.setattr(reports, "write_report", lambda emb, labels, out_dir, **kw: seen.setdefault("dir", out_dir))
    result = _invoke("train", *FAST, "--report", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report" / "centroids.gif").stat().st_size > 0
    assert seen["dir"] == tmp_path / "r" / "report"
