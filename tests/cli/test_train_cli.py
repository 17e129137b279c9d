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


def _kill_in_epoch_2(monkeypatch):
    """Make the next ``train`` die in its second epoch (as a KeyboardInterrupt), like a killed run."""
    from metriclearn.training import LambdaCallback, run

    original = run.train_run

    def killed(config, out_dir, resume=False, callbacks=(), verbose=True, overwrite=False):
        def stop(trainer, batch, logs):
            if trainer.epoch == 1:
                raise KeyboardInterrupt

        return original(config, out_dir, resume, [LambdaCallback(on_batch_end=stop)], verbose, overwrite)

    monkeypatch.setattr(run, "train_run", killed)
    return lambda: monkeypatch.setattr(run, "train_run", original)


def test_resume_with_the_same_command(tmp_path, monkeypatch) -> None:
    out = tmp_path / "r"
    (tmp_path / "c.toml").write_text('lr = 0.004\nloss = ["neighborhood", "cache:0.5"]\n')
    command = ["train", "--config", str(tmp_path / "c.toml"), *FAST, "--seed", "4", "--out", str(out)]
    restore = _kill_in_epoch_2(monkeypatch)
    result = _invoke(*command)
    assert result.exit_code != 0 and not (out / "model.pt").exists()
    restore()
    loaded: list[str] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: (loaded.append(str(getattr(f, "name", f))),
                                                           real_load(f, *a, **k))[1])
    result = _invoke(*command, "--resume")  # up-arrow, add --resume
    monkeypatch.setattr(torch, "load", real_load)
    assert result.exit_code == 0, result.output
    assert len([p for p in loaded if p.endswith("last.pt")]) == 1  # resume has one owner: one load, one check
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    straight = tmp_path / "straight"
    assert _invoke("train", "--config", str(tmp_path / "c.toml"), *FAST, "--seed", "4", "--out", str(straight)).exit_code == 0
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    finished = _invoke(*command, "--resume")
    assert finished.exit_code == 0 and "is already finished (model.pt written); nothing to resume" in finished.output
    assert _invoke("train", "--resume").exit_code == 2


def test_resume_refuses_changed_flags_and_edited_config_naming_both_values(tmp_path, monkeypatch) -> None:
    out = tmp_path / "r"
    restore = _kill_in_epoch_2(monkeypatch)
    assert _invoke("train", *FAST, "--out", str(out)).exit_code != 0
    restore()
    bad = _invoke("train", *FAST, "--epochs", "9", "--lr", "0.5", "--out", str(out), "--resume")
    assert bad.exit_code == 2, bad.output
    line = " ".join(bad.output.split())
    assert "epochs (2 in the run, 9 now); lr (0.003 in the run, 0.5 now)" in line
    text = (out / "config.toml").read_text()
    (out / "config.toml").write_text(text.replace("samples_per_class = 8", "samples_per_class = 4"))
    edited = _invoke("train", "--resume", "--out", str(out))
    assert edited.exit_code == 2
    assert "config.toml was edited since the run started: samples_per_class (8 in the run, 4 now)" in \
        " ".join(edited.output.split())
    (out / "config.toml").write_text(text)
    ok = _invoke("train", "--resume", "--out", str(out), "--threads", "1", "--quiet")  # a runtime key may change
    assert ok.exit_code == 0, ok.output


def test_out_folder_with_foreign_files_is_refused_and_overwrite_replaces_a_run(tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.csv").write_text("my own log\n")
    result = _invoke("train", *FAST, "--out", str(mine))
    assert result.exit_code == 1 and "is not empty and was not written by metriclearn (it holds log.csv)" in result.output
    assert (mine / "log.csv").read_text() == "my own log\n"
    assert sorted(p.name for p in mine.iterdir()) == ["log.csv"]  # nothing written, not even a lock
    run = tmp_path / "run"
    assert _invoke("train", *FAST, "--out", str(run)).exit_code == 0
    again = _invoke("train", *FAST, "--out", str(run))
    assert again.exit_code == 1 and "already holds a metriclearn run; pass --resume to continue it or --overwrite" \
        in again.output
    (run / "checkpoints" / "stale.pt").write_bytes(b"old")
    replaced = _invoke("train", *FAST, "--epochs", "1", "--out", str(run), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    assert (run / "checkpoints" / "stale.pt").read_bytes() == b"old"  # not the run's (its marker): kept (#25)


def test_tiny_csv_is_refused_before_anything_is_written(tmp_path) -> None:
    rows = ["f1,f2,label"] + [f"{i},{i % 3},{c}" for i, c in enumerate("aabbccddee")]
    (tmp_path / "tiny.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r"
    result = _invoke("train", "--data", str(tmp_path / "tiny.csv"), *FAST, "--batch-size", "4",
                     "--samples-per-class", "2", "--out", str(out))
    assert result.exit_code == 1
    assert "the validation split (2 samples) has no class with 2 or more samples" in result.output
    assert not out.exists() or not any(out.iterdir())
    fixed = _invoke("train", "--data", str(tmp_path / "tiny.csv"), *FAST, "--batch-size", "4",
                    "--samples-per-class", "2", "--val-fraction", "0", "--out", str(out))
    assert fixed.exit_code == 0, fixed.output  # the same --out works once the settings are right


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
        (["train", "--encoder", "bogus"], 2, "encoder must be one of 'mlp', 'mlp:H1,H2,...'"),
        (["train", "--encoder", "mlp:0"], 2, "got 'mlp:0'"),
        (["train", "--resume", "--overwrite", "--out", "r"], 2, "--resume and --overwrite exclude each other"),
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

        def __len__(self):
            return len(calls["add"])

        def state_dict(self):  # checkpointed with the run
            return {"frames": len(self)}

        def load_state_dict(self, state):
            raise AssertionError("a fresh run restores no movie")

    def fake_write_report(embeddings, labels, out_dir, method="both", classes=None, config=None, **explorer):
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


def _log(run_dir) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_val_split_classes_selects_on_classes_never_trained_on(tmp_path) -> None:
    from sklearn.datasets import load_digits

    from metriclearn.metrics import retrieval_metrics
    from metriclearn.training import load_run

    X, y = load_digits(return_X_y=True)
    keep = np.concatenate([np.flatnonzero(y == c)[: 30 + 4 * c] for c in range(10)])  # 30..66 per class
    names = np.array(list("abcdefghij"))[y[keep]]
    np.savez(tmp_path / "d.npz", X=X[keep].astype(np.float32), y=names)
    (tmp_path / "c.toml").write_text('val_split = "classes"\nval_fraction = 0.3\n')
    args = ["train", "--data", str(tmp_path / "d.npz"), "--config", str(tmp_path / "c.toml"), *FAST,
            "--epochs", "3", "--seed", "7"]
    result = _invoke(*args, "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    held_out = metrics["val_classes"]
    assert len(held_out) == 3 and metrics["val_split"] == "classes" and "retrieval_vs_reference" not in metrics
    assert "(val: 3 classes unseen in training, " in result.output
    counts = {name: int((names == name).sum()) for name in held_out}
    assert metrics["n_eval"] == sum(counts.values()) and metrics["n_train"] == len(keep) - metrics["n_eval"]
    # the validation metric of every epoch is leave-one-out retrieval on the held-out classes only
    model, _, classes = load_run(tmp_path / "r")
    rows = np.isin(names, held_out)
    with torch.no_grad():
        emb = model(torch.from_numpy(X[keep][rows].astype(np.float32))).numpy()
    labels = np.searchsorted(classes, names[rows])
    expected = retrieval_metrics(emb, labels)
    assert metrics["retrieval"]["map_at_r"] == pytest.approx(float(expected["map_at_r"]))
    log = _log(tmp_path / "r")
    assert float(log[-1]["val_map_at_r"]) == pytest.approx(float(expected["map_at_r"]), abs=1e-6)
    # best.pt holds the epoch with the best val_map_at_r on those unseen classes
    best = torch.load(tmp_path / "r" / "checkpoints" / "best.pt", weights_only=True)
    scores = [float(row["val_map_at_r"]) for row in log]
    assert best["epoch"] == 1 + int(np.argmax(scores))
    # deterministic with --seed; another seed holds out other classes
    assert _invoke(*args, "--out", str(tmp_path / "again")).exit_code == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["val_classes"] == held_out
    assert _invoke(*args[:-1], "11", "--out", str(tmp_path / "other")).exit_code == 0
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["val_classes"] != held_out


def test_val_split_classes_with_early_stopping_and_the_plateau_schedule(tmp_path) -> None:
    result = _invoke("train", *FAST, "--epochs", "6", "--val-split", "classes", "--patience", "1",
                     "--scheduler", "plateau", "--lr", "1e-9", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    log = _log(tmp_path / "r")
    assert len(log) < 6  # nothing improves at lr 1e-9: stopped on the unseen classes' val_map_at_r
    assert all(float(row["val_map_at_r"]) > 0 for row in log)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(metrics["val_classes"]) == 2 and metrics["epochs"] == len(log)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--val-split", "groups"], 2, "'groups' is not one of 'samples', 'classes'"),
        (["--val-split", "classes", "--val-fraction", "0.9"], 0, ""),
    ],
)
def test_val_split_flag_values(tmp_path, args, code, message) -> None:
    result = _invoke("train", *FAST, "--epochs", "1", *args, "--out", str(tmp_path / "r"))
    assert result.exit_code == code, result.output
    assert message in result.output
    if code == 0:  # 0.9 of 10 classes rounds to 9, capped so that two classes remain to train on
        assert len(json.loads((tmp_path / "r" / "metrics.json").read_text())["val_classes"]) == 8


def test_compile_trains_as_well_as_eager(tmp_path) -> None:
    """``--compile`` (torch.compile of the encoder; Inductor generates and builds C++ kernels, hence the
    ~20-60 s this test takes on CPU) on a tiny run whose last batch (1437 = 35 × 40 + 37) is a second shape:
    it finishes, records the key, and trains as well as the eager run. Weights are not compared: fused kernels
    sum in another order and Adam turns those last-bit differences of near-zero gradients into lr-sized ones."""
    metrics = {}
    for name, flag in (("eager", "--no-compile"), ("compiled", "--compile")):
        result = _invoke("train", *FAST, "--epochs", "1", flag, "--out", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())["retrieval"]
    assert "compile = true" in (tmp_path / "compiled" / "config.toml").read_text()
    assert "compile = false" in (tmp_path / "eager" / "config.toml").read_text()
    first, again = (metrics[n]["map_at_r"] for n in ("eager", "compiled"))
    assert again > 0.3 and abs(again - first) < 0.05, metrics  # chance (10 digits) is ~0.1
