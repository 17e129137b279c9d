"""A model folder is data, never code: a folder that asks transformers to run its own Python is refused in one
line, before any prompt, however it reaches metriclearn (``second-opinion --model``, ``--encoder sentence:DIR``, a
saved run that names such a folder)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error

from metriclearn._hf import SAFE_LOAD
from metriclearn.cli import cli

PACKAGE = Path(__file__).resolve().parents[2] / "metriclearn"


def _run(*args: object, answer: str = "y\n"):
    """The real CLI, with a user who answers "y" to any prompt."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=answer)


def _texts(path: Path) -> Path:
    rows = [{"text": f"{w} number {i}", "label": w} for i in range(6) for w in ("computers", "food", "politics")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _with_code(source: Path, target: Path, sentinel: Path, where: str = "config.json") -> Path:
    """A copy of ``source`` whose ``where`` names a module of the folder that writes ``sentinel`` when imported."""
    shutil.copytree(source, target)
    (target / "m.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n", encoding="utf-8")
    data = json.loads((target / where).read_text(encoding="utf-8"))
    data["auto_map"] = {"AutoModel": "m.M", "AutoModelForSequenceClassification": "m.M", "AutoTokenizer": ["m.T", None]}
    (target / where).write_text(json.dumps(data), encoding="utf-8")
    return target


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_second_opinion_refuses_a_folder_with_its_own_code(tiny_bert_dir, tmp_path, where) -> None:
    sentinel = tmp_path / "ran.txt"
    evil = _with_code(tiny_bert_dir, tmp_path / "evil", sentinel, where)
    data = _texts(tmp_path / "t.jsonl")
    result = _run("second-opinion", "--model", evil, "--cache", data, "--data", data, "--theta", 10, "--lam", 0.5,
                  "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, str(evil), f"auto_map in {where}", "never runs code")
    assert not sentinel.exists() and "[y/N]" not in result.output and not (tmp_path / "p.npy").exists()


def test_train_refuses_a_sentence_folder_with_its_own_code(tiny_bert_dir, tmp_path) -> None:
    sentinel = tmp_path / "ran.txt"
    evil = _with_code(tiny_bert_dir, tmp_path / "evil", sentinel)
    result = _run("train", "--data", _texts(tmp_path / "t.jsonl"), "--encoder", f"sentence:{evil}", "--epochs", 1,
                  "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(result, 1, str(evil), "auto_map in config.json")
    assert not sentinel.exists() and not (tmp_path / "run").exists()


def test_a_saved_run_naming_a_folder_that_later_asks_for_code_is_refused(tiny_bert_dir, tmp_path) -> None:
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_bert_dir, folder)
    data = _texts(tmp_path / "t.jsonl")
    assert _run("train", "--data", data, "--encoder", f"sentence:{folder}", "--epochs", 1, "--device", "cpu",
                "--quiet", "--out", tmp_path / "run").exit_code == 0
    sentinel = tmp_path / "ran.txt"
    shutil.rmtree(folder)
    _with_code(tiny_bert_dir, folder, sentinel)  # the folder the run names now carries code
    result = _run("embed", "--model", tmp_path / "run", "--data", data, "--out", tmp_path / "e.npy")
    assert_one_line_error(result, 1, "auto_map in config.json")
    assert not sentinel.exists()


@pytest.mark.parametrize("model_type", ["evil-bert", None])
def test_an_unknown_model_type_is_refused(tiny_bert_dir, tmp_path, model_type) -> None:
    folder = tmp_path / "odd"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.pop("model_type")
    if model_type:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    data = _texts(tmp_path / "t.jsonl")
    result = _run("second-opinion", "--model", folder, "--cache", data, "--data", data, "--theta", 10, "--lam", 0.5,
                  "--out", tmp_path / "p.npy")
    assert_one_line_error(result, 1, str(folder), "model_type", "never runs code")


def test_every_transformers_load_in_the_package_is_safe() -> None:
    """Each ``.from_pretrained(...)`` call in the package passes ``**SAFE_LOAD`` (trust_remote_code=False,
    local_files_only=True), read from the source's syntax tree: a new load that forgets it fails here."""
    calls = [(path.name, node.lineno, node) for path in PACKAGE.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "from_pretrained"]
    assert len(calls) >= 3, "fewer from_pretrained calls than the package has: the walk is stale"
    unsafe = [(name, line) for name, line, node in calls
              if not any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == "SAFE_LOAD"
                         for k in node.keywords)]
    assert not unsafe, f"from_pretrained without **SAFE_LOAD at {unsafe}"
    assert SAFE_LOAD == {"trust_remote_code": False, "local_files_only": True}
