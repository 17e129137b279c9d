"""HiddenFeatures (embedding with the MLP's last hidden layer) against a hand computation, and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_f32_close, assert_one_line_error, invoke, make_blobs
from metriclearn.encoders import build_encoder
from metriclearn.hidden import HiddenFeatures, select_layer
from metriclearn.metrics import retrieval_metrics
from metriclearn.training import load_run


def trained_looking_mlp() -> torch.nn.Module:
    """An 'mlp:12,6' encoder with fitted standardisation and non-trivial BatchNorm statistics."""
    model = build_encoder("mlp:12,6", input_shape=(10,), embedding_dim=4)
    x = torch.randn(200, 10) * 3 + 1
    model.standardize.fit(x)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(x)  # running mean/var move away from 0/1
        for bn in (model.body.layers[1], model.body.layers[4]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return model.eval()


def test_equals_the_last_hidden_layer_before_its_relu_normalised() -> None:
    model = trained_looking_mlp()
    x = torch.randn(9, 10)
    lin1, bn1, _, lin2, bn2, _ = model.body.layers
    with torch.no_grad():
        z = (x - model.standardize.mean) / model.standardize.std
        expected = bn2(lin2(torch.relu(bn1(lin1(z)))))
        expected = expected / expected.norm(dim=1, keepdim=True)
        got = HiddenFeatures(model)(x)
    torch.testing.assert_close(got, expected)
    assert (got < 0).any(), "before the ReLU, negative activations are kept"
    assert HiddenFeatures(model).embedding_dim == 6 and HiddenFeatures(model).input_shape == (10,)


def test_shares_the_encoders_weights() -> None:
    model = trained_looking_mlp()
    hidden, x = HiddenFeatures(model), torch.randn(4, 10)
    before = hidden(x).detach().clone()
    with torch.no_grad():
        model.body.layers[0].weight.mul_(-1)
    assert not torch.allclose(hidden(x), before)
    assert select_layer(model, "embedding") is model


def test_refuses_encoders_without_a_hidden_mlp_layer_and_unknown_layers() -> None:
    with pytest.raises(ValueError, match="layer 'hidden' needs an MLP encoder with a hidden layer .* got 'cnn'"):
        HiddenFeatures(build_encoder("cnn", (64,)))
    with pytest.raises(ValueError, match="needs an MLP encoder .* got 'Linear'"):
        HiddenFeatures(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="layer must be one of 'embedding', 'hidden'; got 'penultimate'"):
        select_layer(trained_looking_mlp(), "penultimate")


TRAIN = {"ant": 40, "bee": 27, "cat": 19, "dog": 11}
NEW = {"emu": 17, "fox": 10, "gnu": 23}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hidden")
    x, y = make_blobs(TRAIN, dim=12, seed=1)
    np.savez(root / "train.npz", X=x, y=y)
    result = invoke("train", "--data", root / "train.npz", "--epochs", 2, "--batch-size", 16, "--samples-per-class",
                    4, "--encoder", "mlp:24", "--embedding-dim", 8, "--device", "cpu", "--quiet", "--out", root / "run")
    assert result.exit_code == 0, result.output
    x, y = make_blobs(NEW, dim=12, seed=2)
    np.savez(root / "new.npz", X=x, y=y)
    return root


def test_cli_embed_and_evaluate_with_the_hidden_layer_on_unseen_classes(root: Path, tmp_path: Path) -> None:
    result = invoke("embed", "--model", root / "run", "--data", root / "new.npz", "--layer", "hidden",
                    "--out", tmp_path / "h.npy", "--device", "cpu")
    assert result.exit_code == 0, result.output
    emb = np.load(tmp_path / "h.npy")
    model = load_run(root / "run").model
    with torch.no_grad():
        expected = HiddenFeatures(model)(torch.from_numpy(np.load(root / "new.npz")["X"])).numpy()
    assert emb.shape == (50, 24)
    assert_f32_close(emb, expected)  # batched CLI path vs one forward pass
    result = invoke("evaluate", "--model", root / "run", "--data", root / "new.npz", "--layer", "hidden", "--json",
                    "--out", tmp_path / "m.json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["data"]["unseen_classes"] == ["emu", "fox", "gnu"] and metrics["data"]["layer"] == "hidden"
    assert metrics["retrieval"] == pytest.approx(retrieval_metrics(expected, np.load(root / "new.npz")["y"]))


def test_cli_refuses_an_unknown_layer(root: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", "--model", root / "run", "--data", root / "new.npz", "--layer", "penultimate")
    assert_one_line_error(result, 2, "'penultimate' is not one of 'embedding', 'hidden'")


def test_cli_refuses_an_index_with_the_hidden_layer(root: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", "--model", root / "run", "--data", root / "new.npz", "--layer", "hidden",
                    "--index", tmp_path / "idx")
    assert_one_line_error(result, 2, "use --index with --layer embedding")
