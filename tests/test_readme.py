"""The README's Python quick start runs as written and learns a useful embedding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python quick start"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["retrieval_metrics"](namespace["trainer"].embed(namespace["val"].X), namespace["val"].y)[
        "precision_at_1"
    ] > 0.9
    assert "precision_at_1" in capsys.readouterr().out


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_second_opinion_python_example_runs(tmp_path, monkeypatch, capsys) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", _section("Second opinion for your model"), flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    opinion = namespace["opinion"]
    assert opinion.tuning_["chosen"] == opinion.layers_[0] and 0 < opinion.lam_ <= 1
    assert (tmp_path / "digits-cache" / "index.json").is_file()
    assert all(r["model"]["label"] != r["blend"]["label"] for r in namespace["changed"])
    printed = capsys.readouterr().out.split()
    assert 0.8 < float(printed[-1]) <= 1.0  # the printed test accuracy of the second opinion


def test_readme_second_opinion_command_runs(tiny_bert_dir, tmp_path, monkeypatch) -> None:
    import json
    import shlex
    import shutil

    import numpy as np
    from click.testing import CliRunner

    from metriclearn.cli import cli

    (block,) = re.findall(r"```bash\n(.*?)```", _section("Second opinion for your model"), flags=re.S)
    words = shlex.split(block.strip())
    assert words[:2] == ["metriclearn", "second-opinion"]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert_dir, "my-classifier")
    fortunes = README.parent / "examples" / "data" / "fortunes" / "fortunes.jsonl"
    rows = [r for r in map(json.loads, fortunes.read_text(encoding="utf-8").splitlines())
            if r["label"] in ("computers", "food", "politics")]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    for name, part in (("train", rows[:60]), ("val", rows[60:90]), ("test", rows[90:120])):
        Path(f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    result = CliRunner().invoke(cli, words[1:])
    assert result.exit_code == 0, result.output
    assert "accuracy on 30 labelled rows" in result.output and Path("proba.npy").is_file()
    assert Path("audit.jsonl").is_file()
