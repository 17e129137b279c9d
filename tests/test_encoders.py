"""Encoders: Standardize, MLP, ConvNet and the build_encoder spec grammar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from metriclearn.encoders import MLP, ConvNet, Encoder, Standardize, build_encoder
from metriclearn.losses import SoftNearestNeighborLoss


def test_standardize_is_identity_until_fitted() -> None:
    x = torch.randn(4, 3)
    assert torch.equal(Standardize(3)(x), x)
    assert set(Standardize(3).state_dict()) == {"mean", "std"}


def test_standardize_per_feature_with_floor() -> None:
    n = 200
    data = np.stack([np.arange(n / 1.0), 1000 * np.arange(n / 1.0) % 7, np.full(n, 5.0), np.r_[np.zeros(n - 1), 1.0]], 1)
    layer = Standardize(4, scope="feature", min_std=0.1).fit(data)
    assert layer.fitted_scope == "feature"
    std = data.std(axis=0)
    expected_std = [std[0], std[1], 1.0, 0.1]  # constant -> 1; one non-zero in 200 -> floored at 0.1 × range
    torch.testing.assert_close(layer.mean, torch.tensor(data.mean(axis=0), dtype=torch.float32))
    torch.testing.assert_close(layer.std, torch.tensor(expected_std, dtype=torch.float32))
    out = layer(torch.tensor(data, dtype=torch.float32))
    torch.testing.assert_close(out[:, :2].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :2].std(0, correction=0), torch.ones(2))
    assert torch.equal(out[:, 2], torch.zeros(n))  # a constant feature maps to 0
    assert out[:, 3].abs().max() <= 10  # the near-constant one stays within ±1/min_std
    assert std[3] < 0.1  # ... where 1/std would have given more than 10


def test_standardize_auto_picks_global_for_a_shared_scale_and_feature_otherwise(rng: np.random.Generator) -> None:
    pixels = rng.uniform(0, 255, size=(50, 16))
    pixels[:, 0] = 0.0  # a dead border pixel does not count against the shared scale
    layer = Standardize(16).fit(pixels)
    assert layer.fitted_scope == "global"
    assert torch.allclose(layer.mean, torch.full((16,), float(pixels.mean())))
    assert torch.allclose(layer.std, torch.full((16,), float(pixels.std())))
    mixed = np.stack([rng.normal(0, 1, 50), rng.normal(3e4, 5e3, 50)], axis=1)
    layer = Standardize(2).fit(torch.tensor(mixed))
    assert layer.fitted_scope == "feature"
    out = layer(torch.tensor(mixed, dtype=torch.float32))
    torch.testing.assert_close(out.std(0, correction=0), torch.ones(2), rtol=1e-4, atol=1e-4)


def test_standardize_accepts_image_batches_and_rejects_bad_input() -> None:
    images = torch.rand(6, 1, 4, 4)
    layer = Standardize(16, scope="global").fit(images)
    assert layer(images).shape == (6, 16)
    torch.testing.assert_close(layer(images), layer(images.reshape(6, 16)))
    with pytest.raises(ValueError, match=r"Standardize expects input of shape \(N, 16\), got \(6, 15\)"):
        layer(torch.zeros(6, 15))
    with pytest.raises(ValueError, match="Standardize.fit data has dimension 3, expected 16"):
        layer.fit(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="Standardize.fit data contains NaN or inf values in 1 of 2 rows"):
        layer.fit(np.r_[np.zeros((1, 16)), np.full((1, 16), np.inf)])
    with pytest.raises(ValueError, match="scope must be one of 'auto', 'feature', 'global'; got 'pixel'"):
        Standardize(4, scope="pixel")


def test_mlp_default_structure_and_unit_norm_output() -> None:
    mlp = MLP(784)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 64)]
    assert any(isinstance(m, nn.BatchNorm1d) for m in mlp.modules())
    out = mlp(torch.randn(5, 784))
    assert out.shape == (5, 64)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    raw = MLP(10, hidden=(), out_features=3, normalize=False)
    assert [type(m) for m in raw.modules()] == [MLP, nn.Sequential, nn.Linear]
    assert not torch.allclose(raw(torch.randn(4, 10)).norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match=r"MLP expects input of shape \(N, 784\), got \(5, 783\)"):
        mlp(torch.randn(5, 783))
    with pytest.raises(TypeError, match="MLP input must be a torch.Tensor, got ndarray"):
        mlp(np.zeros((5, 784)))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 1, 1)])
def test_convnet_accepts_flat_and_image_input(shape: tuple[int, int, int]) -> None:
    net = ConvNet(shape, out_features=16, channels=(4, 8, 8)).eval()
    images = torch.randn(3, *shape)
    out = net(images)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, net(images.reshape(3, -1)))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match=r"ConvNet expects input of shape \(N, \d+\), got \(3, 7\)"):
        net(torch.randn(3, 7))


def test_convnet_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"in_shape must be \(C, H, W\), got \(28, 28\)"):
        ConvNet((28, 28))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"channels must name at least one stage, got \(\)"):
        ConvNet((1, 8, 8), channels=())


def test_build_encoder_specs() -> None:
    mlp = build_encoder("mlp", (784,))
    assert isinstance(mlp, Encoder) and isinstance(mlp.standardize, Standardize)
    assert mlp.body.hidden == (256,) and mlp.embedding_dim == 64 and mlp.standardize.scope == "auto"
    assert build_encoder("mlp:512,256", 10, embedding_dim=8).body.hidden == (512, 256)
    assert build_encoder(" MLP:32", (1, 28, 28)).body.in_features == 784
    cnn = build_encoder("cnn", (784,), embedding_dim=32, normalize=False)
    assert cnn.body.in_shape == (1, 28, 28) and cnn.body.channels == (32, 64) and not cnn.body.normalize
    assert cnn.standardize.scope == "global"
    assert build_encoder("cnn", (64,)).body.in_shape == (1, 8, 8)
    assert build_encoder("cnn:16,32,64", (3, 32, 32)).body.channels == (16, 32, 64)
    assert build_encoder("cnn", (12, 12)).body.in_shape == (1, 12, 12)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("resnet", ValueError, r"unknown encoder spec 'resnet'; allowed forms: 'mlp', 'mlp:H1,H2,...'"),
        ("mlp:", ValueError, r"unknown encoder spec 'mlp:'; allowed forms"),
        ("mlp:a,b", ValueError, r"encoder spec 'mlp:a,b' must list positive integers after ':'"),
        ("cnn:0", ValueError, r"encoder spec 'cnn:0' must list positive integers after ':'"),
        ("sentence:models/minilm", ValueError, r"model folder 'models/minilm' does not exist"),
        (3, TypeError, r"encoder spec must be a string, got 3"),
    ],
)
def test_build_encoder_rejects_bad_specs(spec: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        build_encoder(spec, (64,))  # type: ignore[arg-type]


def test_build_encoder_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="encoder 'cnn' needs a square image, but 63 features is not a perfect square"):
        build_encoder("cnn", (63,))
    with pytest.raises(ValueError, match=r"encoder 'cnn' needs input_shape \(F,\), \(H, W\) or \(C, H, W\)"):
        build_encoder("cnn", (1, 1, 8, 8))
    with pytest.raises(ValueError, match="input_shape entry must be a positive integer, got 0"):
        build_encoder("mlp", (0,))
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer, got 0"):
        build_encoder("mlp", (4,), embedding_dim=0)


@pytest.mark.parametrize("spec", ["mlp:16", "cnn:4,8"])
def test_rebuild_and_load_state_dict_reproduces_outputs(spec: str) -> None:
    model = build_encoder(spec, (64,), embedding_dim=8)
    x = torch.rand(20, 64) * 16
    model.standardize.fit(x)
    model.train()
    model(x)  # move the BatchNorm running statistics away from their initial values
    model.eval()
    rebuilt = build_encoder(model.spec, model.input_shape, model.embedding_dim, model.normalize)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert torch.equal(rebuilt(x), model(x))
    assert torch.equal(rebuilt.standardize.std, model.standardize.std)


@pytest.mark.parametrize("spec", ["mlp:32", "cnn:8,16"])
def test_encoders_learn_on_digits(spec: str) -> None:
    digits = load_digits()
    x = torch.tensor(digits.data[:256], dtype=torch.float32)
    y = torch.tensor(digits.target[:256])
    model = build_encoder(spec, (64,), embedding_dim=16)
    model.standardize.fit(x)
    loss_fn = SoftNearestNeighborLoss(0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        batch = torch.arange(step * 64, step * 64 + 64) % 256
        loss = loss_fn(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
