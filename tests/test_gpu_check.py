"""``make gpu-check`` (benchmarks/gpu_check.py) on a machine without CUDA: one line, exit 0."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys) -> None:
    """The script's entry point, ``main()``, in-process (torch is already imported), with CUDA hidden so this
    holds on a GPU machine too; ``python benchmarks/gpu_check.py`` exits with what ``main()`` returns."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert module.main([]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False): nothing to check"]
    assert err == ""
    assert "sys.exit(main())" in SCRIPT.read_text()
    with pytest.raises(SystemExit) as usage:  # a wrong option is a usage error (exit 2), not a silent pass
        module.main(["--no-such-option"])
    assert usage.value.code == 2


def test_gpu_tests_use_the_gpu_marker() -> None:
    """A test that needs a GPU says so with ``@pytest.mark.gpu`` (so ``make gpu-check`` runs it), not with a
    skip of its own that ``pytest -m gpu`` would never select."""
    import re

    own_skip = re.compile(r"skipif\(\s*not\s+torch\.cuda\.is_available\(\)|get_num_gpus\(\)\s*==\s*0|"
                          r"if not torch\.cuda\.is_available\(\):\s*\n\s*pytest\.skip")
    tests = Path(__file__).resolve().parent
    offenders = [str(path.relative_to(tests)) for path in sorted(tests.rglob("*.py"))
                 if path.name != "conftest.py" and own_skip.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
