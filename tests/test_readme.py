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
