"""Issue #19 item 4: ``metriclearn --help`` and every ``COMMAND --help`` load no heavy library.

Start-up *time* is measured in benchmarks/bench_startup.py (BENCHMARKS.md); here, what gets imported, in a
fresh interpreter (this one has torch already).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import invoke, make_blobs

HEAVY = ("torch", "faiss", "sklearn", "scipy", "umap", "matplotlib", "transformers", "tqdm")

_SCRIPT = """
import json, sys
from click.testing import CliRunner
from metriclearn.cli import COMMANDS, cli
calls = [["--help"]] + [[name, "--help"] for name, *_ in COMMANDS]
calls += [["index", sub, "--help"] for sub in ("build", "query", "info")]
codes = [CliRunner().invoke(cli, call).exit_code for call in calls]
print(json.dumps({"codes": codes, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def test_help_of_every_command_imports_no_heavy_library() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["codes"]) == {0}
    assert result["loaded"] == []


def test_commands_are_listed_in_workflow_order() -> None:
    from metriclearn.cli import COMMANDS

    text = invoke("--help").output
    listed = text[text.index("Commands:"):].split()
    positions = [listed.index(name) for name, *_ in COMMANDS]
    assert positions == sorted(positions)
    assert [name for name, *_ in COMMANDS][:3] == ["train", "embed", "evaluate"]
    for name, *_ in COMMANDS:  # every listed command loads
        assert invoke(*name.split(), "--help").exit_code == 0


# ------------------------------------------------------------------ commands on .npy embeddings: what they import
_RUN_SCRIPT = """
import json, sys
from click.testing import CliRunner
from metriclearn.cli import cli
heavy = json.loads(sys.argv[2])
for args in json.loads(sys.argv[1]):  # one after another in this fresh interpreter: "loaded" accumulates
    result = CliRunner().invoke(cli, args)
    print(json.dumps({"code": result.exit_code, "output": result.output,
                      "loaded": [m for m in heavy if m in sys.modules]}))
"""
# what no command on .npy embeddings needs (scipy.stats and pandas come with scikit-learn's base classes)
NOT_FOR_NPY = ("torch", "transformers", "matplotlib", "umap", "metriclearn.training", "metriclearn.sampler")
NOT_FOR_SEARCH = ("sklearn", "scipy.stats", "pandas")


def _run_fresh(tmp_path: Path, *calls: list[object]) -> list[dict[str, Any]]:
    """Run CLI calls one after another in a fresh interpreter; per call: exit code, output, heavy modules loaded."""
    calls_json = json.dumps([[str(a) for a in call] for call in calls])
    done = subprocess.run([sys.executable, "-c", _RUN_SCRIPT, calls_json, json.dumps(NOT_FOR_NPY + NOT_FOR_SEARCH)],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    steps = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(steps) == len(calls), done.stdout + done.stderr
    for call, step in zip(calls, steps, strict=True):
        assert step["code"] == 0, (call, step["output"])
    return steps


@pytest.fixture
def npy_files(tmp_path: Path) -> Path:
    """Uneven classes: an index (ant 40, bee 23, cat 9), held-out calibration rows, queries with a class never
    indexed (dog)."""
    x, y = make_blobs({"ant": 40, "bee": 23, "cat": 9}, dim=6, seed=0)
    np.save(tmp_path / "emb.npy", x)
    np.save(tmp_path / "labels.npy", y)
    x, y = make_blobs({"ant": 31, "bee": 17, "cat": 12}, dim=6, seed=1)
    np.save(tmp_path / "cal.npy", x)
    np.save(tmp_path / "cal_labels.npy", y)
    x, y = make_blobs({"ant": 7, "bee": 5, "cat": 3, "dog": 4}, dim=6, seed=2)
    np.save(tmp_path / "q.npy", x)
    np.save(tmp_path / "q_labels.npy", y)
    return tmp_path


def test_index_commands_on_npy_import_neither_torch_nor_scikit_learn(npy_files: Path) -> None:
    """``index build / query / info`` on .npy files search with faiss and numpy: no torch (≈ 1.6 s of start-up),
    no scikit-learn; a sharded index too. Fresh interpreter: the test's own has torch already."""
    steps = _run_fresh(
        npy_files,
        ["index", "build", "--embeddings", "emb.npy", "--labels", "labels.npy", "--out", "idx"],
        ["index", "query", "--index", "idx", "--embeddings", "q.npy", "-k", 5, "--json"],
        ["index", "info", "--index", "idx"],
        ["index", "build", "--embeddings", "emb.npy", "--labels", "labels.npy", "--shards", 2, "--out", "sharded"],
        ["index", "query", "--index", "sharded", "--embeddings", "q.npy", "-k", 5],
    )
    assert steps[0]["output"].startswith("indexed 72 vectors of dimension 6 (Flat, cosine)")
    result = json.loads(steps[1]["output"])
    assert np.array(result["ids"]).shape == (19, 5) and set(np.ravel(result["labels"])) <= {"ant", "bee", "cat"}
    assert "vectors:" in steps[2]["output"] and "72" in steps[2]["output"]
    assert len(steps[4]["output"].strip().splitlines()) == 1 + 19 * 5
    assert steps[-1]["loaded"] == []


def test_knn_calibrate_and_classify_on_npy_do_not_import_torch(npy_files: Path) -> None:
    """``calibrate`` and ``classify --method knn`` on .npy files: faiss and scikit-learn, no torch. The cache model
    computes with torch: the last call imports it (the check sees torch when it is there)."""
    npy = ["--embeddings", "q.npy", "--labels", "q_labels.npy"]
    steps = _run_fresh(
        npy_files,
        ["index", "build", "--embeddings", "emb.npy", "--labels", "labels.npy", "--out", "idx"],
        ["calibrate", "--index", "idx", "--embeddings", "cal.npy", "--labels", "cal_labels.npy", "--method", "knn",
         "--target-precision", 0.9],
        ["classify", "--index", "idx", *npy, "--method", "knn", "--out", "pred.csv", "--reject"],
        ["classify", "--index", "idx", *npy, "--method", "knn", "--k", 3, "--out", "pred.npy"],
        ["classify", "--index", "idx", *npy, "--method", "cache", "--out", "cache.npy"],
    )
    assert "calibration stored in idx" in steps[1]["output"]
    assert "accuracy" in steps[2]["output"] and "4 of a class the classifier does not know: dog" in steps[2]["output"]
    assert np.load(npy_files / "pred.npy").shape == (19,)
    assert [m for m in steps[3]["loaded"] if m in NOT_FOR_NPY] == []
    assert "sklearn" in steps[3]["loaded"]  # the classifiers are scikit-learn estimators
    assert "torch" in steps[4]["loaded"]
