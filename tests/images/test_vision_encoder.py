"""``VisionEncoder`` on tiny Hugging Face backbones built offline (ResNet, ViT), and the optional kinds
(torchvision, timm) where they import: shapes, what trains, what is saved, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metriclearn.encoders import build_encoder
from metriclearn.vision import VisionEncoder

pytest.importorskip("transformers")


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    embeddings = model(x)
    same = (y[:, None] == y[None]).float()
    loss = ((embeddings @ embeddings.T) * (1 - 2 * same)).mean()  # pull classes together, push others apart
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("backbone", ["tiny_resnet_dir", "tiny_vit_dir"])
def test_frozen_backbone_trains_only_the_head_and_saves_only_it(backbone: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(backbone)
    model = build_encoder(f"hf-vision:{folder}", (3, 16, 16), embedding_dim=6)
    x, y = torch.rand(7, 3, 16, 16), torch.tensor([0, 0, 1, 1, 1, 2, 2])
    out = model(x)
    assert out.shape == (7, 6) and torch.allclose(out.norm(dim=1), torch.ones(7), rtol=1e-5)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.head.weight.detach().clone()
    model.train()
    _step(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # BN statistics too
    assert not torch.equal(head, model.head.weight)
    assert sorted(model.state_dict()) == ["head.bias", "head.weight"]
    rebuilt = build_encoder(model.spec, (3, 16, 16), embedding_dim=6)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("backbone", ["tiny_resnet_dir", "tiny_vit_dir"])
def test_fine_tuning_moves_only_the_unfrozen_blocks(backbone: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(backbone)
    model = VisionEncoder(f"hf-vision:{folder}", embedding_dim=6, freeze=False, unfreeze=1)
    blocks = model._backbone.blocks
    assert len(blocks) == 2  # ResNet: 2 stages; ViT: 2 transformer layers
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.train()
    _step(model, torch.rand(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2]))
    top = {id(p) for p in blocks[-1].parameters()}
    moved = {n for n, p in model.backbone.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all(id(dict(model.backbone.named_parameters())[n]) in top for n in moved)
    assert {id(p) for p in model.encoder_parameters()} == top
    assert any(k.startswith("backbone.") for k in model.state_dict())  # a fine-tuned backbone is saved


def test_vit_uses_its_size_and_normalisation(tiny_vit_dir: Path) -> None:
    model = VisionEncoder(f"hf-vision:{tiny_vit_dir}", embedding_dim=None, normalize=False).eval()
    assert model.input_size == 16 and model.hidden_size == 16
    x = torch.rand(2, 3, 32, 32)  # resized to the ViT's 16×16, normalised with mean = std = 0.5
    manual = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        expected = model.backbone(pixel_values=(manual - 0.5) / 0.5).last_hidden_state[:, 0]
        torch.testing.assert_close(model(x), expected)
    grey = torch.rand(2, 1, 16, 16)  # a grey image is repeated into the 3 channels the backbone takes
    with torch.no_grad():
        torch.testing.assert_close(model(grey), model(grey.expand(-1, 3, -1, -1)))


def test_refused_folders_and_options(tmp_path: Path, tiny_resnet_dir: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        VisionEncoder(f"hf-vision:{tmp_path / 'nowhere'}")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "config.json").write_text(json.dumps({"model_type": "resnet", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ValueError, match="asks to run its own code"):
        VisionEncoder(f"hf-vision:{tmp_path / 'code'}")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30}))
    with pytest.raises(ValueError, match="is a text model, not a vision backbone"):
        VisionEncoder(f"hf-vision:{tmp_path / 'text'}")
    with pytest.raises(ValueError, match="unfreeze=3 but the backbone .* has 2 blocks"):
        VisionEncoder(f"hf-vision:{tiny_resnet_dir}", freeze=False, unfreeze=3)
    with pytest.raises(ValueError, match="unknown encoder option"):
        build_encoder(f"hf-vision:{tiny_resnet_dir}", (3, 16, 16), pooling="mean")
    with pytest.raises(ValueError, match=r"embeds images \(C, H, W\), but the samples have shape \(64,\)"):
        build_encoder(f"hf-vision:{tiny_resnet_dir}", (64,))
    with pytest.raises(ValueError, match="VisionEncoder expects images"):
        VisionEncoder(f"hf-vision:{tiny_resnet_dir}")(torch.rand(2, 48))


def _imports(name: str) -> str | None:
    try:
        __import__(name)
    except Exception as exc:  # noqa: BLE001 - torchvision's wheel may fail to load its C++ ops with a CPU torch
        return f"{name} does not import here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


@pytest.mark.skipif(_imports("torchvision") is not None, reason=str(_imports("torchvision")))
def test_torchvision_backbone_with_a_weights_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    model = build_encoder(f"torchvision:resnet18:{tmp_path / 'r18.pth'}", (3, 32, 32), embedding_dim=5)
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 5)
    assert sorted(model.state_dict()) == ["head.bias", "head.weight"]
    with pytest.warns(UserWarning, match="no weights file: random initialisation"):
        build_encoder("torchvision:resnet18", (3, 32, 32))


@pytest.mark.skipif(_imports("timm") is not None, reason=str(_imports("timm")))
def test_timm_backbone() -> None:
    model = build_encoder("timm:resnet18", (3, 32, 32), embedding_dim=5)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_missing_optional_kinds_say_why() -> None:
    for kind in ("torchvision", "timm"):
        reason = _imports(kind)
        if reason is None:
            continue
        with pytest.raises(ValueError, match=f"encoder {kind}:resnet18 needs {kind}, which does not import here"):
            build_encoder(f"{kind}:resnet18", (3, 16, 16))


def test_same_image_same_vector_whatever_the_batch(tiny_resnet_dir: Path) -> None:
    model = VisionEncoder(f"hf-vision:{tiny_resnet_dir}", embedding_dim=4).eval()
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        whole = model(x).numpy()
        parts = np.concatenate([model(x[:2]).numpy(), model(x[2:]).numpy()])
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-6)


def test_frozen_features_are_computed_once_per_picture(tiny_resnet_dir: Path) -> None:
    """A frozen backbone runs once per picture (then only the head), unless training augments; the outputs and
    the head's gradients are those of a model that keeps nothing."""
    torch.manual_seed(0)
    model = VisionEncoder(f"hf-vision:{tiny_resnet_dir}", embedding_dim=4)
    plain = VisionEncoder(f"hf-vision:{tiny_resnet_dir}", embedding_dim=4, cache_size=0)
    plain.load_state_dict(model.state_dict())
    seen: list[int] = []
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(1))
    x = torch.rand(7, 3, 16, 16)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    for batch, runs in ((x[:5], 1), (x[2:], 1), (x[[6, 0, 3]], 0)):  # batches that overlap, in another order
        calls = len(seen)
        out, expected = model(batch), plain(batch)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        grads = [torch.autograd.grad(m(batch)[:, 0].sum(), m.head.weight)[0] for m in (model, plain)]
        torch.testing.assert_close(grads[0], grads[1])
        assert len(seen) - calls == runs  # the backbone runs on the new pictures only, once
    assert len(model._memo) == 7
    seen.clear()
    model(x)
    assert not seen  # every picture seen before: the backbone does not run
    augmenting = VisionEncoder(f"hf-vision:{tiny_resnet_dir}", embedding_dim=4, augment="light")
    augmenting.backbone.register_forward_hook(lambda module, args, out: seen.append(1))
    augmenting.train()
    augmenting(x), augmenting(x)
    assert len(seen) == 2 and not augmenting._memo  # augmented pictures differ every time: nothing kept
    augmenting.eval()
    augmenting(x), augmenting(x)
    assert len(seen) == 3 and len(augmenting._memo) == 7  # embedding does not augment: kept
    small = VisionEncoder(f"hf-vision:{tiny_resnet_dir}", embedding_dim=4, cache_size=3)
    small(x)
    assert len(small._memo) == 3
    _step(small, x, y)  # still trains with a full memory
