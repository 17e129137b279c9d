"""Issue #19 item 6 (one name for an embeddings .npy, -q and examples everywhere, calibrate --model --data,
index info per kind, numbers by magnitude) and item 5's calibrate warnings, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import invoke, make_blobs

COMMANDS = [["train"], ["embed"], ["evaluate"], ["index", "build"], ["index", "query"], ["index", "info"],
            ["calibrate"], ["classify"], ["second-opinion"], ["report"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_has_quiet_and_ends_with_examples(command) -> None:
    text = invoke(*command, "--help").output
    assert "-q, --quiet" in text
    tail = text[text.rindex("Examples:"):].strip().splitlines()[1:]
    assert 1 <= len(tail) <= 3 and all(line.strip().startswith(f"metriclearn {' '.join(command)} ") for line in tail)
    assert invoke("--help").output.rstrip().splitlines()[-1].strip().startswith("metriclearn ")


@pytest.fixture(scope="module")
def run_and_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency")
    x, y = make_blobs({"a": 30, "b": 22, "c": 27, "d": 19}, dim=6, seed=3, spread=4.0)
    np.savez(root / "train.npz", X=x, y=y)
    xc, yc = make_blobs({"a": 20, "b": 15, "c": 18, "d": 11}, dim=6, seed=4, spread=4.0)
    np.savez(root / "cal.npz", X=xc, y=yc)
    result = invoke("train", "--data", root / "train.npz", "--epochs", 2, "--batch-size", 16, "--encoder", "mlp:16",
                    "--embedding-dim", 4, "--lr", "1e-5", "--device", "cpu", "-q", "--out", root / "run")
    assert result.exit_code == 0, result.output
    assert invoke("index", "build", "--model", root / "run", "--data", root / "train.npz", "--out",
                  root / "idx").exit_code == 0
    assert invoke("embed", "--model", root / "run", "--data", root / "cal.npz", "--out", root / "cal.npy",
                  "--labels-out", root / "cal_y.npy").exit_code == 0
    return root


def test_old_option_names_are_aliases(run_and_index, tmp_path) -> None:
    root = run_and_index
    new = invoke("index", "query", "--index", root / "idx", "--embeddings", root / "cal.npy", "-k", 3, "--json")
    old = invoke("index", "query", "--index", root / "idx", "--queries", root / "cal.npy", "-k", 3, "--json")
    assert new.exit_code == 0 and new.output == old.output
    for flag in ("--embeddings", "--queries"):
        result = invoke("classify", "--index", root / "idx", flag, root / "cal.npy", "--method", "knn", "-q",
                        "--out", tmp_path / f"{flag[2:]}.npy")
        assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(tmp_path / "embeddings.npy"), np.load(tmp_path / "queries.npy"))


def test_calibrate_takes_model_and_data_like_its_siblings(run_and_index, tmp_path) -> None:
    root = run_and_index
    import shutil

    for name, source in (("by-model", ["--model", root / "run", "--data", root / "cal.npz"]),
                         ("by-file", ["--features", root / "cal.npy", "--labels", root / "cal_y.npy"])):
        shutil.copytree(root / "idx", tmp_path / name)
        result = invoke("calibrate", "--index", tmp_path / name, *source, "--method", "knn", "--seed", 1, "-q")
        assert result.exit_code == 0, result.output
    stored = [json.loads(invoke("index", "info", "--index", tmp_path / name, "--json").output)["calibration"]["knn"]
              for name in ("by-model", "by-file")]
    assert stored[0]["probability"] == stored[1]["probability"] and stored[0]["coverage"] == stored[1]["coverage"]
    result = invoke("calibrate", "--index", tmp_path / "by-file", "--embeddings", root / "cal.npy", "--method", "knn")
    assert result.exit_code == 2 and "--embeddings needs --labels" in result.output


def test_calibrate_warns_on_a_grid_edge_and_reports_the_threshold_spread(tmp_path) -> None:
    x, y = make_blobs({"yes": 60, "no": 45}, dim=4, seed=5, spread=20.0)  # far apart: every row right
    xc, yc = make_blobs({"yes": 40, "no": 31}, dim=4, seed=6, spread=20.0)
    for name, array in {"e": x, "y": y, "c": xc, "cy": yc}.items():
        np.save(tmp_path / f"{name}.npy", array)
    assert invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--labels", tmp_path / "y.npy",
                  "--out", tmp_path / "idx").exit_code == 0
    result = invoke("calibrate", "--index", tmp_path / "idx", "--embeddings", tmp_path / "c.npy", "--labels",
                    tmp_path / "cy.npy", "--method", "knn", "--target-precision", "0.9")
    assert result.exit_code == 0, result.output
    edge = [line for line in result.output.splitlines() if line.startswith("warning: knn calibration: the best")]
    assert edge and all("edge of its grid" in line for line in edge)
    assert any("kept the original grid's choice" in line for line in edge)  # runs off: a degenerate fit
    spread = [line for line in result.output.splitlines() if line.startswith("rejection threshold uncertainty")]
    assert len(spread) == 1 and "(bootstrap SE)" in spread[0]
    facts = json.loads(invoke("index", "info", "--index", tmp_path / "idx", "--json").output)
    state = facts["calibration"]["knn"]
    assert state["grid_notes"] and state["probability"]["temperature"] == pytest.approx(0.05)
    low, high = state["rejection"]["threshold_interval"]
    assert low <= high and state["rejection"]["threshold_se"] >= 0


def test_index_info_shows_only_the_parameters_of_its_kind(tmp_path) -> None:
    x, _ = make_blobs({0: 400, 1: 300}, dim=8)
    np.save(tmp_path / "e.npy", x)
    lines = {}
    for kind in ("flat", "ivf", "hnsw"):
        assert invoke("index", "build", "--embeddings", tmp_path / "e.npy", "--kind", kind, "--out",
                      tmp_path / kind).exit_code == 0
        info = invoke("index", "info", "--index", tmp_path / kind, "-q").output
        lines[kind] = next(line for line in info.splitlines() if line.startswith("parameters:"))
    assert lines["flat"].endswith("none (exact search)")
    assert "nlist=" in lines["ivf"] and "hnsw_m" not in lines["ivf"] and "ef_" not in lines["ivf"]
    assert "hnsw_m=" in lines["hnsw"] and "ef_search=" in lines["hnsw"] and "nlist" not in lines["hnsw"]


def test_report_prints_small_settings_by_magnitude(run_and_index, tmp_path) -> None:
    root = run_and_index
    result = invoke("report", "--model", root / "run", "--data", root / "cal.npz", "--method", "tsne", "-q",
                    "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "1e-05" in html and ">0.0000<" not in html
