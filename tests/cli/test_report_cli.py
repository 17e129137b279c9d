"""``metriclearn report`` through click's CliRunner: files written, one-line errors, exit codes 0 / 1 / 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import invoke as run
from reports.test_explorer import page_data


def image(path: object) -> Image.Image:
    """Open an image from its bytes, leaving no file handle open."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = (rng.normal(size=(3, 6))[y] * 5 + rng.normal(size=(120, 6))).astype(np.float32)
    np.save(tmp_path / "E.npy", x)
    np.save(tmp_path / "Y.npy", np.array(["ant", "bee", "cat"])[y])
    return tmp_path / "E.npy", tmp_path / "Y.npy"


def test_report_from_embeddings_writes_every_file(files, tmp_path) -> None:
    e, y = files
    result = run("report", "--embeddings", e, "--labels", y, "--method", "tsne", "--out", tmp_path / "r",
                 "--max-points", 90, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "wrote tsne.png, report.html, metrics.json" in result.output and "precision_at_1" in result.output
    assert image(tmp_path / "r" / "tsne.png").format == "PNG"
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["data"]["classes"] == ["ant", "bee", "cat"] and metrics["data"]["tsne_points"] == 90
    assert metrics["data"]["seed"] == 3 and metrics["data"]["source"] == "E.npy"
    page = (tmp_path / "r" / "report.html").read_text()
    assert "data:image/png;base64," in page and f"{metrics['retrieval']['map_at_r']:.4f}" in page


def test_report_from_a_run_loads_it_once_and_shows_its_config(tmp_path, monkeypatch) -> None:
    import metriclearn.runs as runs

    fast = ["--epochs", "1", "--batch-size", "40", "--encoder", "mlp:16", "--embedding-dim", "4", "--device", "cpu"]
    assert run("--quiet", "train", *fast, "--out", tmp_path / "run").exit_code == 0
    calls = []
    real = runs.load_run

    def counting_load_run(run_dir):
        calls.append(Path(run_dir))
        return real(run_dir)

    monkeypatch.setattr(runs, "load_run", counting_load_run)
    result = run("report", "--model", tmp_path / "run", "--data", "digits", "--method", "tsne", "--max-points", 200,
                 "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert calls == [tmp_path / "run"]  # loaded once (it used to be loaded twice)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "neighborhood" in page and "epochs" in page and "run on digits" in page


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --embeddings FILE.npy or --model DIR --data PATH"),
        (["--labels", "{y}"], "--labels goes with --embeddings"),
        (["--model", "{d}"], "--model DIR needs --data PATH"),
        (["--embeddings", "{e}", "--labels", "{y}", "--data", "digits"], "not both"),
        (["--embeddings", "{e}", "--labels", "{y}", "--method", "pca"], "'pca' is not one of"),
        (["--embeddings", "{e}", "--labels", "{y}", "--max-points", "0"], "0 is not in the range x>=1"),
    ],
)
def test_usage_errors_exit_2(files, tmp_path, args, message) -> None:
    e, y = files
    argv = [a.format(e=e, y=y, d=tmp_path) for a in args]
    result = run("report", *argv, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in result.output


def save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_bad_input_is_one_line_exit_1(files, tmp_path) -> None:
    e, y = files
    x = np.load(e)
    nan = x.copy()
    nan[0, 0] = np.inf
    cases = [
        (e, save(tmp_path / "short.npy", np.load(y)[:100]), "short.npy' has 100 entries but there are 120 samples"),
        (e, save(tmp_path / "one.npy", np.zeros(120, dtype=int)),
         "one.npy': labels hold a single class (0): a report needs at least 2 classes"),
        (save(tmp_path / "nan.npy", nan), y, "nan.npy' contains NaN or inf values in 1 of 120 rows"),
        (save(tmp_path / "few.npy", x[:10]), save(tmp_path / "few_y.npy", np.arange(10) % 2),
         "few_y.npy': tsne needs at least 16 points to project, got 10"),
        (tmp_path / "missing.npy", y, "embeddings file '" + str(tmp_path / "missing.npy") + "' does not exist"),
    ]
    for emb, lab, message in cases:
        result = run("report", "--embeddings", emb, "--labels", lab, "--out", tmp_path / "r")
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert message in result.output
    assert not (tmp_path / "r").exists()


def test_train_report_and_report_from_the_run_end_to_end(tmp_path) -> None:
    fast = ["--epochs", "2", "--batch-size", "40", "--encoder", "mlp:32", "--embedding-dim", "8", "--device", "cpu"]
    trained = run("--quiet", "train", *fast, "--report", "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.output
    report_dir = tmp_path / "run" / "report"
    assert image(report_dir / "centroids.gif").n_frames == 2  # one frame per epoch
    assert image(report_dir / "centroids.png").format == "PNG"
    assert json.loads((report_dir / "metrics.json").read_text())["data"]["n_points"] == 360  # the val split
    explorer = page_data(report_dir / "explorer.html")  # the explorer of the val split, with its training curves
    assert explorer["n_shown"] == 360 and explorer["thumbs"]["w"] == 8 and len(explorer["log"]["rows"]) == 2
    assert explorer["config"]["epochs"] == 2 and explorer["config"]["embedding_dim"] == 8
    result = run("report", "--model", tmp_path / "run", "--data", "digits", "--method", "tsne", "--max-points", 300,
                 "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["data"]["n_points"] == 1797 and metrics["data"]["dim"] == 8 and metrics["data"]["tsne_points"] == 300
    assert metrics["data"]["source"] == "run on digits"
    assert "encoder" in (tmp_path / "r" / "report.html").read_text()  # the run's configuration


def test_report_without_labels_draws_one_colour_and_measures_nothing(files, tmp_path) -> None:
    e, _ = files
    result = run("report", "--embeddings", e, "--method", "tsne", "--out", tmp_path / "r", "--seed", 1)
    assert result.exit_code == 0, result.output
    assert "no labels: projections only, no class metrics" in result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics) == {"data"} and metrics["data"]["n_points"] == 120 and metrics["data"]["classes"] == []
    assert image(tmp_path / "r" / "tsne.png").format == "PNG"
    assert "precision" not in (tmp_path / "r" / "report.html").read_text().lower()
    explorer = page_data(tmp_path / "r" / "explorer.html")  # map and neighbours, no failures
    assert explorer["codes"] is None and explorer["failures"] == [] and explorer["n_shown"] == 120
