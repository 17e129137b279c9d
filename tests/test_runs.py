"""metriclearn.runs: the run directory that inference reads, without the trainer (issue #20 item 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import assert_f32_close, invoke, make_blobs


def _run_dir(root: Path) -> tuple[Path, Path]:
    """A run directory written by :func:`metriclearn.runs.save_model` (no training: its weights are the seeded
    initial ones) and an uneven labelled data file with a class the run never saw."""
    from metriclearn.encoders import build_encoder
    from metriclearn.runs import save_model
    from metriclearn.training import TrainConfig

    X, y = make_blobs({"ant": 9, "bee": 14, "cat": 5, "dog": 3}, dim=6)
    np.savez(root / "data.npz", X=X, y=y)
    config = TrainConfig(encoder="mlp:8", embedding_dim=4)
    torch.manual_seed(3)
    run = root / "run"
    run.mkdir()
    save_model(run / "model.pt", build_encoder("mlp:8", (6,), 4), config, (6,))
    config.save(run / "config.toml")
    (run / "classes.json").write_text(json.dumps(["ant", "bee", "cat"]))
    return run, root / "data.npz"


_COMMANDS = """
import json, sys
from click.testing import CliRunner
from metriclearn.cli import cli
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    print(json.dumps({"code": result.exit_code, "output": result.output,
                      "loaded": [m for m in ("metriclearn.training.trainer", "metriclearn.training.objectives",
                                             "umap") if m in sys.modules]}))
"""


def test_inference_commands_on_a_run_do_not_import_the_trainer(tmp_path) -> None:
    """``index query`` and ``report`` read the run with metriclearn.runs: neither the trainer nor the objectives
    is imported, nor umap for a t-SNE report (what cli/report.py's docstring says)."""
    run, data = _run_dir(tmp_path)
    assert invoke("index", "build", "--model", run, "--data", data, "--out", tmp_path / "idx", "--device", "cpu",
                  "--quiet").exit_code == 0
    commands = [["index", "query", "--index", str(tmp_path / "idx"), "--model", str(run), "--data", str(data),
                 "-k", "4", "--json", "--device", "cpu", "--quiet"],
                ["report", "--model", str(run), "--data", str(data), "--method", "tsne", "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--quiet"]]
    done = subprocess.run([sys.executable, "-c", _COMMANDS, json.dumps(commands)], capture_output=True, text=True,
                          check=True)
    query, report = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert query["code"] == 0 and report["code"] == 0, (query["output"], report["output"])
    assert len(json.loads(query["output"])["ids"]) == 31  # every query row (9 + 14 + 5 + 3) got its neighbours
    assert (tmp_path / "r" / "tsne.png").is_file()
    assert query["loaded"] == report["loaded"] == []


def test_old_import_paths_are_the_same_objects() -> None:
    import metriclearn.runs as runs
    import metriclearn.training as training
    import metriclearn.training.run as training_run

    for name in ("save_model", "load_run", "TrainedRun", "RunEmbeddings", "embed_from_run"):
        assert getattr(training_run, name) is getattr(runs, name)
    for name in ("load_run", "TrainedRun", "RunEmbeddings", "embed_from_run"):
        assert getattr(training, name) is getattr(runs, name)


def test_a_saved_run_loads_and_embeds_as_its_model_does(tmp_path) -> None:
    from metriclearn.data import load_data
    from metriclearn.runs import embed_from_run, load_run

    run_dir, data = _run_dir(tmp_path)
    run = load_run(run_dir)
    embedded = run.embed(data, device="cpu", batch_size=5)  # 31 rows: batches that do not divide
    assert run.classes == ["ant", "bee", "cat"] and embedded.classes == ["ant", "bee", "cat", "dog"]
    assert embedded.present_classes() == (["ant", "bee", "cat"], ["dog"])
    with torch.no_grad():
        direct = run.model(torch.from_numpy(load_data(data).X)).numpy()
    assert_f32_close(embedded.embeddings, direct)
    embeddings, labels, classes = embed_from_run(run_dir, data, device="cpu")
    assert_f32_close(embeddings, direct)
    assert classes == embedded.classes and (labels == embedded.labels).all()
