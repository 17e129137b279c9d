"""Labels optional and unseen classes welcome, through the real CLI (issue 11 item 1; issue 14 item 3).

One small run is trained on four uneven classes (ant, bee, cat, dog); the data it is then applied to holds
two of them (cat, dog) and two it never saw (emu, fox), with uneven counts, in every input format, with and
without labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke, make_blobs
from metriclearn.fingerprint import model_fingerprint
from metriclearn.indexes import EmbeddingIndex
from metriclearn.metrics import retrieval_metrics
from metriclearn.training import load_run

TRAIN = {"ant": 40, "bee": 27, "cat": 19, "dog": 11}
NEW = {"cat": 13, "dog": 7, "emu": 17, "fox": 10}  # two seen classes, two unseen, uneven
FAST = ["--epochs", "3", "--batch-size", "16", "--samples-per-class", "4", "--encoder", "mlp:16",
        "--embedding-dim", "8", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unseen")
    x, y = make_blobs(TRAIN, seed=1)
    np.savez(root / "train.npz", X=x, y=y)
    for name, seed in (("run", "1"), ("other", "2")):
        result = invoke("train", "--data", root / "train.npz", *FAST, "--seed", seed, "--out", root / name)
        assert result.exit_code == 0, result.output
    x, y = make_blobs(NEW, seed=2)
    np.savez(root / "new.npz", X=x, y=y)
    np.savez(root / "new_unlabelled.npz", X=x)
    np.save(root / "raw.npy", x)
    header = ",".join(f"f{i}" for i in range(x.shape[1]))
    rows = [",".join(repr(float(v)) for v in row) for row in x]
    (root / "new.csv").write_text(header + ",label\n" + "".join(f"{r},{lab}\n" for r, lab in zip(rows, y)))
    (root / "new_unlabelled.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    xr, yr = make_blobs({"emu": 9, "fox": 14, "cat": 5}, seed=3)
    np.savez(root / "reference.npz", X=xr, y=yr)
    return root


def expected_embeddings(root: Path, name: str = "run") -> np.ndarray:
    model = load_run(root / name).model
    with torch.no_grad():
        return model(torch.from_numpy(np.load(root / "new.npz")["X"])).numpy()


@pytest.mark.parametrize("data", ["new.npz", "new_unlabelled.npz", "new.csv", "new_unlabelled.csv", "raw.npy"])
def test_embed_takes_unlabelled_data_and_unseen_classes_in_every_format(root: Path, tmp_path: Path, data) -> None:
    out = tmp_path / "e.npy"
    labelled = "unlabelled" not in data and data != "raw.npy"
    extra = ["--labels-out", tmp_path / "l.npy"] if labelled else []
    result = invoke("embed", "--model", root / "run", "--data", root / data, "--out", out, "--batch-size", 7, *extra)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), expected_embeddings(root), rtol=1e-5, atol=1e-6)
    if labelled:  # label values, not codes: ready for index build --labels
        np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), np.load(root / "new.npz")["y"])
        assert "2 class(es) seen in training, 2 new" in result.output


def test_embed_labels_out_needs_labels(root: Path, tmp_path: Path) -> None:
    result = invoke("embed", "--model", root / "run", "--data", root / "raw.npy", "--out", tmp_path / "e.npy",
                    "--labels-out", tmp_path / "l.npy")
    assert result.exit_code == 1 and "raw.npy has no labels to write to --labels-out" in result.output
    assert not (tmp_path / "e.npy").exists()


def test_evaluate_measures_unseen_classes_and_says_which_were_seen(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = invoke("evaluate", "--model", root / "run", "--data", root / "new.npz", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "classes seen in training: 2 (cat, dog); not seen: 2 (emu, fox)" in result.output
    metrics = json.loads(out.read_text())
    data = metrics["data"]
    assert data["seen_classes"] == ["cat", "dog"] and data["unseen_classes"] == ["emu", "fox"]
    assert (data["n_seen"], data["n_unseen"], data["n_query"]) == (20, 27, 47)
    emb, y = expected_embeddings(root), np.load(root / "new.npz")["y"]
    for key, value in retrieval_metrics(emb, y).items():
        assert metrics["retrieval"][key] == pytest.approx(value, abs=1e-6)
    unseen = np.isin(y, ["emu", "fox"])
    for group, rows in (("retrieval_seen", ~unseen), ("retrieval_unseen", unseen)):
        want = retrieval_metrics(emb[rows], y[rows])
        assert metrics[group] == pytest.approx(want, abs=1e-6)


def test_evaluate_against_a_reference_of_new_classes(root: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", "--model", root / "run", "--data", root / "new.npz", "--reference",
                    root / "reference.npz", "--json", "--out", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    reference = np.load(root / "reference.npz")
    ref_emb = load_run(root / "run").embed(root / "reference.npz").embeddings
    want = retrieval_metrics(expected_embeddings(root), np.load(root / "new.npz")["y"], ref_emb, reference["y"])
    assert metrics["retrieval_vs_reference"] == pytest.approx(want, abs=1e-6)
    assert metrics["knn_accuracy_k5"] == pytest.approx(want["knn_accuracy"], abs=1e-6)
    assert metrics["data"]["reference"] == str(root / "reference.npz") and metrics["data"]["n_reference"] == 28


def test_evaluate_needs_labels(root: Path) -> None:
    result = invoke("evaluate", "--model", root / "run", "--data", root / "new_unlabelled.csv")
    assert result.exit_code == 1 and "new_unlabelled.csv has no 'label' column" in result.output


def test_only_what_needs_the_training_classes_refuses_unseen_ones(root: Path) -> None:
    run = load_run(root / "run")
    with pytest.raises(ValueError, match=r"new\.npz: 2 label value\(s\) are not in the 4 known classes: 'emu', 'fox'"):
        run.embed(root / "new.npz", unseen="error")
    embedded = run.embed(root / "new.npz")
    assert embedded.classes == ["ant", "bee", "cat", "dog", "emu", "fox"] and embedded.known == 4
    assert embedded.present_classes() == (["cat", "dog"], ["emu", "fox"])


def test_index_build_from_a_model_records_its_fingerprint_and_any_labels(root: Path, tmp_path: Path) -> None:
    fingerprint = model_fingerprint(load_run(root / "run").model)
    for data, labels in (("new.npz", np.load(root / "new.npz")["y"]), ("new_unlabelled.csv", None)):
        out = tmp_path / data
        result = invoke("index", "build", "--model", root / "run", "--data", root / data, "--metric", "l2",
                        "--out", out)
        assert result.exit_code == 0, result.output
        index = EmbeddingIndex.load(out)
        assert index.attrs["model_fingerprint"] == fingerprint
        np.testing.assert_allclose(index.vectors(index.ids), expected_embeddings(root), rtol=1e-5, atol=1e-6)
        if labels is None:
            assert index.labels is None
        else:
            np.testing.assert_array_equal(index.labels, labels)  # unseen classes kept by name


def test_query_and_classify_embed_on_the_fly_and_refuse_another_models_index(root: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    assert invoke("index", "build", "--model", root / "run", "--data", root / "reference.npz", "--out", idx,
                  "--metric", "l2").exit_code == 0
    np.save(tmp_path / "q.npy", expected_embeddings(root))
    on_the_fly = invoke("index", "query", "--index", idx, "--model", root / "run", "--data", root / "new.csv",
                        "-k", 3, "--json")
    from_file = invoke("index", "query", "--index", idx, "--queries", tmp_path / "q.npy", "-k", 3, "--json")
    assert on_the_fly.exit_code == 0 and from_file.exit_code == 0, on_the_fly.output + from_file.output
    assert json.loads(on_the_fly.output)["ids"] == json.loads(from_file.output)["ids"]
    pred = tmp_path / "p.npy"
    result = invoke("classify", "--index", idx, "--model", root / "run", "--data", root / "new_unlabelled.npz",
                    "--method", "knn", "--k", 3, "--out", pred)
    assert result.exit_code == 0, result.output
    truth = np.load(root / "new.npz")["y"]
    findable = np.isin(truth, ["emu", "fox"])  # the reference's big classes; its 5 cats get outvoted at times
    assert np.mean(np.load(pred)[findable] == truth[findable]) > 0.9
    for command in (["index", "query", "-k", 3], ["classify", "--method", "knn", "--out", pred]):
        result = invoke(*command, "--index", idx, "--model", root / "other", "--data", root / "new.npz")
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"the index {idx} was built by another model" in result.output and str(root / "other") in result.output


def test_report_from_a_model_on_unlabelled_and_unseen_data(root: Path, tmp_path: Path) -> None:
    result = invoke("report", "--model", root / "run", "--data", root / "new_unlabelled.npz", "--method", "tsne",
                    "--out", tmp_path / "plain")
    assert result.exit_code == 0, result.output
    assert "no labels: projections only" in result.output
    metrics = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert set(metrics) == {"data"} and metrics["data"]["n_points"] == 47 and metrics["data"]["tsne_points"] == 47
    result = invoke("report", "--model", root / "run", "--data", root / "new.npz", "--method", "tsne",
                    "--out", tmp_path / "coloured")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "coloured" / "metrics.json").read_text())
    assert metrics["data"]["classes"] == ["ant", "bee", "cat", "dog", "emu", "fox"]
    want = retrieval_metrics(expected_embeddings(root), np.load(root / "new.npz")["y"])
    assert metrics["retrieval"] == pytest.approx(want, abs=1e-6)


def test_a_damaged_run_names_the_file(root: Path, tmp_path: Path) -> None:
    import shutil

    cases = (("classes.json", "[1, 2", "classes.json is not valid JSON"),
             ("classes.json", '["a", "a"]', "must hold a list of at least 2 distinct"),
             ("config.toml", "epochs = = 3", "config.toml is not valid TOML"))
    for i, (name, content, message) in enumerate(cases):
        run = tmp_path / f"run{i}"
        shutil.copytree(root / "run", run)
        (run / name).write_text(content)
        result = invoke("embed", "--model", run, "--data", root / "raw.npy", "--out", tmp_path / "e.npy")
        assert result.exit_code == 1 and str(run / name) in result.output and message in result.output


def test_evaluate_refuses_a_calibrated_index_of_another_model(root: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    assert invoke("index", "build", "--model", root / "run", "--data", root / "reference.npz", "--out", idx,
                  "--metric", "l2").exit_code == 0
    embedded = load_run(root / "run").embed(root / "new.npz")
    rows = np.isin(embedded.label_values(), ["cat", "emu", "fox"])  # the indexed classes
    np.save(tmp_path / "f.npy", embedded.embeddings[rows])
    np.save(tmp_path / "l.npy", embedded.label_values()[rows])
    result = invoke("calibrate", "--index", idx, "--features", tmp_path / "f.npy", "--labels", tmp_path / "l.npy",
                    "--method", "knn", "--k", 3)
    assert result.exit_code == 0, result.output
    assert EmbeddingIndex.load(idx).attrs["model_fingerprint"] == model_fingerprint(load_run(root / "run").model)
    ok = invoke("evaluate", "--model", root / "run", "--data", root / "new.npz", "--index", idx,
                "--out", tmp_path / "m.json")
    assert ok.exit_code == 0, ok.output
    bad = invoke("evaluate", "--model", root / "other", "--data", root / "new.npz", "--index", idx,
                 "--out", tmp_path / "m2.json")
    assert bad.exit_code == 1 and f"the index {idx} was built by another model" in bad.output
    assert not (tmp_path / "m2.json").exists()
