"""``metriclearn second-opinion --model ...`` on a metriclearn run, a Hugging Face directory and a TorchScript file,
through click's CliRunner: outputs, printed accuracies, and every error path as one line."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from conftest import assert_one_line_error, invoke
from sklearn.datasets import load_digits
from torch import nn

from metriclearn.indexes import EmbeddingIndex
from metriclearn.pretrained import SecondOpinion
from metriclearn.pretrained.loading import load_model

FORTUNES = Path(__file__).resolve().parents[2] / "examples" / "data" / "fortunes" / "fortunes.jsonl"


def run(*args: str | Path) -> Result:
    return invoke("--quiet", *args)


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits split into uneven cache / val / test .npz files (raw 0..16 pixels, as `train --data digits` sees)."""
    root = tmp_path_factory.mktemp("so-digits")
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(1).permutation(len(y))
    parts = {"cache": order[:700], "val": order[700:1000], "test": order[1000:1301]}
    paths = {}
    for name, idx in parts.items():
        paths[name] = root / f"{name}.npz"
        np.savez(paths[name], X=X[idx].astype(np.float32), y=y[idx])
    paths["test_x"] = root / "test_x.npy"
    np.save(paths["test_x"], X[parts["test"]].astype(np.float32))
    paths["test_y"] = y[parts["test"]]
    return paths


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("so-run") / "run"
    result = run("train", "--data", "digits", "--loss", "softmax", "--epochs", "2", "--embedding-dim", "16",
                 "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def text_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real fortunes of the tiny model's classes in cache / val / test .jsonl, plus an unlabelled file."""
    root = tmp_path_factory.mktemp("so-text")
    rows = [json.loads(line) for line in FORTUNES.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["label"] in ("computers", "food", "politics")]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:130]]
    paths = {}
    for name, part in (("cache", rows[:70]), ("val", rows[70:100]), ("test", rows[100:]),
                       ("unlabelled", [{"text": r["text"]} for r in rows[100:]]),
                       ("unknown", [{"text": "Bank holiday", "label": "finance"}] + rows[:3])):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


def test_run_directory_with_a_head(softmax_run, digits_files, tmp_path) -> None:
    out, audit, save = tmp_path / "p.npy", tmp_path / "audit.jsonl", tmp_path / "saved"
    result = run("second-opinion", "--model", softmax_run, "--cache", digits_files["cache"], "--tune-data",
                 digits_files["val"], "--data", digits_files["test"], "--audit", audit, "--save", save, "--out", out)
    assert result.exit_code == 0, result.output
    proba = np.load(out)
    assert proba.shape == (301, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    # the printed accuracies are those of the saved probabilities and of the model alone
    blend_acc = np.mean(proba.argmax(1) == digits_files["test_y"])
    assert f"second opinion {blend_acc:.4f}" in result.output
    assert "tuned on 300 held-out rows: layer " in result.output and "candidates: head:input" in result.output
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    assert f"audit: {len(rows)} changed decisions" in result.output
    # the saved cache is reused for unlabelled inputs and gives the same probabilities
    again = tmp_path / "again.npy"
    result = run("second-opinion", "--model", softmax_run, "--cache", save, "--data", digits_files["test_x"],
                 "--out", again)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(again), proba, atol=1e-5)  # the index stores float32 normalised keys
    assert "accuracy" not in result.output


def test_hugging_face_directory_with_jsonl_texts(tiny_bert_dir, text_files, tmp_path) -> None:
    out = tmp_path / "p.npy"
    result = run("second-opinion", "--model", tiny_bert_dir, "--cache", text_files["cache"], "--tune-data",
                 text_files["val"], "--data", text_files["test"], "--layer", "bert.encoder.layer.2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "layer bert.encoder.layer.2" in result.output and "accuracy on 30 labelled rows: model" in result.output
    loaded = load_model(tiny_bert_dir)  # the same blend from Python, columns in id2label order
    opinion = SecondOpinion(loaded.model, layers="bert.encoder.layer.2", tokenizer=loaded.tokenizer)
    rows = [json.loads(line) for line in text_files["cache"].read_text().splitlines()]
    val = [json.loads(line) for line in text_files["val"].read_text().splitlines()]
    test = [json.loads(line) for line in text_files["test"].read_text().splitlines()]
    opinion.fit([r["text"] for r in rows], [r["label"] for r in rows])
    opinion.tune([r["text"] for r in val], [r["label"] for r in val])
    np.testing.assert_allclose(np.load(out), opinion.predict_proba([r["text"] for r in test]), atol=1e-5)
    result = run("second-opinion", "--model", tiny_bert_dir, "--cache", text_files["cache"], "--data",
                 text_files["unlabelled"], "--out", tmp_path / "u.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "u.npy").shape == (30, 3) and "accuracy" not in result.output


def _torchscript(path: Path) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_torchscript_file_with_array_data(digits_files, tmp_path) -> None:
    model = _torchscript(tmp_path / "model.pt")
    out = tmp_path / "p.npy"
    result = run("second-opinion", "--model", model, "--cache", digits_files["cache"], "--data",
                 digits_files["test"], "--theta", "30", "--lam", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    assert "layer 2:input, theta=30, lam=0.5" in result.output
    assert np.load(out).shape == (301, 10)


@pytest.mark.parametrize(
    "case, code, fragments",
    [
        ("unknown layer", 1, ["layer 'bert.encoder.layer.9' is not a module of BertForSequenceClassification",
                              "closest of its"]),
        ("label not in model", 1, ["label 'finance' is not one of the model's 3 classes"]),
        ("dir without config", 1, ["holds neither config.json (a Hugging Face model) nor model.pt"]),
        ("not torchscript", 1, ["is not a TorchScript file"]),
        ("missing model", 1, ["does not exist"]),
        ("npz for a text model", 1, ["reads texts, give a .jsonl file"]),
        ("unlabelled cache", 1, ["holds no labels; the cache and tuning data need them"]),
        ("no head", 1, ["has no classification head; train it with --loss softmax or --loss complement"]),
        ("another model's cache", 1, ["was built with another model"]),
        ("no cache", 2, ["--model needs --cache"]),
        ("mixed forms", 2, ["--embeddings does not go with --model"]),
        ("neither form", 2, ["give --index DIR --embeddings F --probs P, or --model MODEL"]),
        ("audit suffix", 2, ["must end in .jsonl"]),
        ("texts for an array model", 1, ["this torchscript model reads arrays (.npz, .csv or .npy), not texts"]),
        ("wrong sample shape", 1, ["samples have shape (6,) but the model expects (64,)"]),
        ("layer with a saved cache", 2, ["--layer does not go with a saved --cache directory"]),
        ("probabilities not summing to 1", 1, ["--probs file", "probs.npy' rows must be non-negative and sum to 1; row 0 sums to 2"]),
    ],
)
def test_every_error_is_one_line(case, code, fragments, tiny_bert_dir, text_files, digits_files, softmax_run,
                                 tmp_path) -> None:
    hf = ["--model", tiny_bert_dir, "--cache", text_files["cache"], "--data", text_files["test"]]
    out = ["--out", tmp_path / "p.npy"]
    args = {
        "unknown layer": [*hf, "--layer", "bert.encoder.layer.9"],
        "label not in model": ["--model", tiny_bert_dir, "--cache", text_files["unknown"], "--data", text_files["test"]],
        "dir without config": ["--model", tmp_path, "--cache", text_files["cache"], "--data", text_files["test"]],
        "not torchscript": ["--model", FORTUNES, "--cache", digits_files["cache"], "--data", digits_files["test"]],
        "missing model": ["--model", tmp_path / "nope", "--cache", text_files["cache"], "--data", text_files["test"]],
        "npz for a text model": ["--model", tiny_bert_dir, "--cache", digits_files["cache"], "--data", text_files["test"]],
        "unlabelled cache": ["--model", tiny_bert_dir, "--cache", text_files["unlabelled"], "--data", text_files["test"]],
        "no head": ["--model", "NEIGHBORHOOD_RUN", "--cache", digits_files["cache"], "--data", digits_files["test"]],
        "another model's cache": ["--model", "SAVED_FOR_OTHER", "--cache", "SAVED", "--data", digits_files["test"]],
        "no cache": ["--model", tiny_bert_dir, "--data", text_files["test"]],
        "mixed forms": [*hf, "--features", digits_files["test_x"]],
        "neither form": [],
        "audit suffix": [*hf, "--audit", tmp_path / "audit.txt"],
        "probabilities not summing to 1": ["--index", "INDEX", "--features", "F", "--probs", "P"],
        "texts for an array model": ["--model", "TS", "--cache", digits_files["cache"], "--data", text_files["test"]],
        "wrong sample shape": ["--model", softmax_run, "--cache", digits_files["cache"], "--data", "SMALL"],
        "layer with a saved cache": ["--model", tiny_bert_dir, "--cache", tmp_path, "--data", text_files["test"],
                                     "--layer", "classifier:input"],
    }[case]
    if case == "texts for an array model":
        args[1] = _torchscript(tmp_path / "ts.pt")
    if case == "wrong sample shape":
        np.savez(tmp_path / "small.npz", X=np.ones((4, 6), np.float32), y=np.arange(4))
        args[5] = tmp_path / "small.npz"
    if case == "probabilities not summing to 1":
        index = EmbeddingIndex(3, device="cpu")
        index.add(np.eye(3), labels=[0, 1, 2])
        index.save(tmp_path / "index")
        np.save(tmp_path / "f.npy", np.eye(3, dtype=np.float32))
        np.save(tmp_path / "probs.npy", np.full((3, 3), 2 / 3, dtype=np.float32))
        args[1::2] = [tmp_path / "index", tmp_path / "f.npy", tmp_path / "probs.npy"]
    if case == "no head":
        result = run("train", "--data", "digits", "--epochs", "1", "--device", "cpu", "--out", tmp_path / "nb")
        assert result.exit_code == 0, result.output
        args[1] = tmp_path / "nb"
    if case == "another model's cache":
        saved = tmp_path / "saved"
        result = run("second-opinion", "--model", softmax_run, "--cache", digits_files["cache"], "--data",
                     digits_files["test"], "--save", saved, *out)
        assert result.exit_code == 0, result.output
        args[1], args[3] = _torchscript(tmp_path / "other.pt"), saved
    assert_one_line_error(run("second-opinion", *args, *out), code, *fragments)


def test_text_run_directory_with_a_head(tiny_bert_dir, text_files, tmp_path) -> None:
    run_dir = tmp_path / "text-run"
    result = run("train", "--data", text_files["cache"], "--encoder", f"sentence:{tiny_bert_dir}", "--loss", "softmax",
                 "--encoder-option", "max_length=128",  # the tiny model has 128 positions, its tokenizer says 512
                 "--epochs", "1", "--embedding-dim", "8", "--device", "cpu", "--out", run_dir)
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.npy"
    result = run("second-opinion", "--model", run_dir, "--cache", text_files["cache"], "--tune-data", text_files["val"],
                 "--data", text_files["test"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "candidates: head:input" in result.output and "encoder.transformer.encoder.layer.2" in result.output
    assert np.load(out).shape == (30, 3)
    classes = json.loads((run_dir / "classes.json").read_text())
    assert classes == ["computers", "food", "politics"]
    assert_one_line_error(run("second-opinion", "--model", run_dir, "--cache", text_files["cache"], "--data",
                              text_files["cache"].with_suffix(".npz"), "--out", out), 1, "reads texts")
