"""Every command on an image folder, through the real CLI: train a pretrained (tiny) backbone with augmentation,
then embed (no augmentation; 0 or 2 decoding workers give the same vectors), evaluate, index build/query --model,
classify --model and report (thumbnails and the nearest-neighbours grid)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_f32_close, assert_one_line_error, invoke

from .conftest import write_images

pytest.importorskip("transformers")
pytest.importorskip("kornia")

FAST = ["--epochs", "2", "--batch-size", "6", "--samples-per-class", "2", "--embedding-dim", "8", "--device", "cpu",
        "--quiet", "--threads", "1", "--lr", "0.01"]
COUNTS = {"red": 9, "green": 7, "blue": 6, "yellow": 5}  # 27 images: batches of 6 do not divide them


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_resnet_dir: Path) -> tuple[Path, Path]:
    """(image folder, run): a fine-tuned tiny ResNet (top stage only) with strong augmentation."""
    root = tmp_path_factory.mktemp("images_cli")
    write_images(root / "pictures", COUNTS)
    result = invoke("train", "--data", root / "pictures", "--encoder", f"hf-vision:{tiny_resnet_dir}", "--finetune",
                    "--unfreeze", "1", "--encoder-lr", "0.001", "--augment", "strong", "--image-size", "16",
                    "--val-fraction", "0.3", "--out", root / "run", *FAST)
    assert result.exit_code == 0, result.output
    return root / "pictures", root / "run"


def test_train_records_the_image_geometry(trained: tuple[Path, Path]) -> None:
    _, run = trained
    payload = torch.load(run / "model.pt", weights_only=True)
    assert payload["input_shape"] == [3, 16, 16]
    assert payload["encoder_options"] == {"freeze": False, "unfreeze": 1, "augment": "strong"}
    assert any(k.startswith("backbone.") for k in payload["state_dict"])  # fine-tuned: the backbone is saved
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_eval"] == sum(COUNTS.values())


def test_embed_does_not_augment_and_workers_do_not_change_vectors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from metriclearn.data import load_data
    from metriclearn.training import load_run

    folder, run = trained
    outputs = []
    for workers in ("0", "2", "0"):
        out = tmp_path / f"e{len(outputs)}.npy"
        result = invoke("embed", "--model", run, "--data", folder, "--out", out, "--workers", workers, "--quiet")
        assert result.exit_code == 0, result.output
        outputs.append(np.load(out))
    np.testing.assert_array_equal(outputs[0], outputs[1])  # 2 decoding processes: the very same vectors
    np.testing.assert_array_equal(outputs[0], outputs[2])  # embedding twice: no random augmentation
    loaded = load_run(run)
    X = load_data(folder, require_labels=False, images=loaded.image_options()).X
    with torch.no_grad():
        direct = loaded.model.eval()(torch.from_numpy(X)).numpy()
    assert_f32_close(outputs[0], direct, ulps=64)
    loaded.model.train()  # in training mode the same batch is augmented: different vectors
    with torch.no_grad():
        assert not np.allclose(loaded.model(torch.from_numpy(X)).numpy(), direct, atol=1e-3)


def test_evaluate_index_and_classify_on_a_folder(trained: tuple[Path, Path], tmp_path: Path) -> None:
    folder, run = trained
    result = invoke("evaluate", "--model", run, "--data", folder, "--out", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads((tmp_path / "eval.json").read_text())["retrieval"]["precision_at_1"] <= 1
    result = invoke("index", "build", "--model", run, "--data", folder, "--out", tmp_path / "idx", "--quiet")
    assert result.exit_code == 0, result.output
    assert "indexed 27 vectors of dimension 8" in result.output
    new = tmp_path / "new"  # the same classes drawn again, plus a class the run never saw
    write_images(new, {"red": 3, "blue": 2, "yellow": 2}, seed=1)
    (new / "purple").mkdir()
    Image.fromarray(np.full((16, 20, 3), (150, 20, 160), np.uint8)).save(new / "purple" / "p.png")
    result = invoke("index", "query", "--index", tmp_path / "idx", "--model", run, "--data", new, "-k", "3")
    assert result.exit_code == 0, result.output
    result = invoke("classify", "--index", tmp_path / "idx", "--model", run, "--data", new, "--method", "knn",
                    "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert "knn: 8 predictions" in result.output
    predictions = (tmp_path / "p.csv").read_text().splitlines()
    assert predictions[0].startswith("prediction,") and len(predictions) == 9


def test_report_shows_thumbnails_and_a_neighbour_grid(trained: tuple[Path, Path], tmp_path: Path) -> None:
    folder, run = trained
    result = invoke("report", "--model", run, "--data", folder, "--method", "tsne", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "neighbours.png" in result.output
    grid = Image.open(tmp_path / "r" / "neighbours.png")
    assert grid.format == "PNG" and grid.size[0] > 300
    page = (tmp_path / "r" / "explorer.html").read_text()
    assert '"thumbs":{"w":16,"h":16,"c":3' in page.replace(" ", "")


def test_vision_encoder_on_features_and_augment_on_vectors_are_refused(tiny_resnet_dir: Path, tmp_path: Path) -> None:
    result = invoke("train", "--data", "digits", "--encoder", f"hf-vision:{tiny_resnet_dir}", "--out", tmp_path / "a",
                    *FAST)
    assert_one_line_error(result, 1, "digits holds numeric features", "needs images")
    result = invoke("train", "--data", "digits", "--encoder", "mlp", "--augment", "light", "--out", tmp_path / "b",
                    *FAST)
    assert_one_line_error(result, 2, "augment='light' applies to images")


def test_second_opinion_on_a_torchscript_image_classifier(tmp_path: Path) -> None:
    write_images(tmp_path / "cache", {"0": 6, "1": 5, "2": 4})  # integer class folders: the classifier's outputs
    write_images(tmp_path / "queries", {"0": 2, "1": 2, "2": 1}, seed=3)
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                     torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.jit.script(classifier).save(str(tmp_path / "clf.pt"))
    result = invoke("second-opinion", "--model", tmp_path / "clf.pt", "--cache", tmp_path / "cache", "--data",
                    tmp_path / "queries", "--out", tmp_path / "blend.npy", "--quiet")
    assert result.exit_code == 0, result.output
    blend = np.load(tmp_path / "blend.npy")
    assert blend.shape == (5, 3) and np.allclose(blend.sum(axis=1), 1, rtol=1e-5)


def test_second_opinion_decodes_the_cache_as_the_data(tmp_path: Path) -> None:
    """Without --image-size, the cache (20-pixel pictures) is decoded at the size --data (16 pixels) was, so a
    model that takes one geometry gets it for both; each folder used to follow its own first picture."""
    write_images(tmp_path / "cache", {"0": 6, "1": 5, "2": 4}, side=20)
    write_images(tmp_path / "queries", {"0": 2, "1": 2, "2": 1}, seed=3)  # 16 x 20 pictures
    torch.manual_seed(0)
    fixed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3))  # takes (N, 3, 16, 16) only
    torch.jit.script(fixed).save(str(tmp_path / "clf.pt"))
    result = invoke("second-opinion", "--model", tmp_path / "clf.pt", "--cache", tmp_path / "cache", "--data",
                    tmp_path / "queries", "--out", tmp_path / "blend.npy", "--quiet")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "blend.npy").shape == (5, 3)
