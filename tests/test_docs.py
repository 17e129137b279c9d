"""Docs are code: every ```bash and ```python block of README.md and docs/*.md runs as written.

The conventions, for whoever writes a page (also in README.md, "Writing docs"):

- **One test per page** (``test_page_runs[docs/x.md]``), pages in file order. A page's blocks run one after
  another, in page order, in one fresh temporary folder: the page's working folder. A block may use files made
  by an earlier block of the same page (``emb.npy`` from ``metriclearn embed ...``); nothing is shared between
  pages, so every page makes its own data.
- **Data** comes from the package (the built-in ``digits``; the packaged MiniLM of the ``text`` extra) or from
  the repository: the repository's ``examples/`` (scripts and ``examples/data/``) is copied to ``examples/`` in
  the working folder, so a block reaches a shipped file by its path in a clone
  (``cp examples/data/fortunes/fortunes.jsonl .``, ``python examples/stand_in_classifier.py``).
  Nothing is downloaded.
- **On PATH**: ``metriclearn``, ``python`` and ``python3``, all of the interpreter running the tests, with the
  package under test first on ``PYTHONPATH``; ``OMP_NUM_THREADS=1`` and ``MPLBACKEND=Agg``.
- **A bash block** runs with ``bash -euo pipefail``: every command must exit 0; a failure names the page line.
  **A python block** runs in a fresh ``python -c`` process in the folder: it must be complete (its own imports
  and data). Each process a block starts may use ``COMMAND_CPU_S`` seconds of CPU (CPU, not wall time, so a
  busy machine does not fail a page); the test output (``pytest -rP``) lists every block's wall and CPU time.
- **A block written to a file**: ``<!-- file: my.toml -->`` on the line before a fence (any language) writes
  the block to that path in the working folder instead of running it (a config a later command reads).
- **Skipping**: ``<!-- skip: REASON -->`` on the line before a fence skips that block, and the reason shows in
  the test report (``test_marked_block_is_skipped``, pytest ``-ra``). Mark a block that needs a GPU, several
  machines or the network, that takes more than a minute on 2 idle CPU cores, or that would recurse
  (``make test``). Blocks of another language (```toml, ```text, ```json) are not run.
- Keep a page fast: few epochs, small data (the docs part of the suite: a few minutes on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN = ("bash", "python")                 # the languages that run
COMMAND_CPU_S = 120                      # CPU seconds one process of a block may use ("a minute" with room)
HANG_S = 1800                            # wall-clock guard against a hang only: a shared machine can be 10x slow
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|file)\s*:\s*(?P<value>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language, first code line (1-based), code, and marker (if any)."""

    page: Path
    lang: str
    line: int
    code: str
    skip: str | None = None
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, with the ``<!-- skip: ... -->`` / ``<!-- file: ... -->`` marker
    of the line just before each fence. An unclosed fence or a marker without a value is an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        marker = MARKER.match(lines[i - 1]) if i else None
        if marker and not marker["value"]:
            raise ValueError(f"{page.name}:{i}: a '<!-- {marker['kind']}: -->' marker needs a value")
        indent, start = len(opening["indent"]), i + 1
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            i += 1
        if i == len(lines):
            raise ValueError(f"{page.name}:{start}: a ``` fence is never closed")
        code = "\n".join(line[indent:] for line in lines[start:i]) + "\n"
        kind = marker["kind"] if marker else None
        blocks.append(Block(page, opening["lang"], start + 1, code,
                            skip=marker["value"] if kind == "skip" else None,
                            file=marker["value"] if kind == "file" else None))
        i += 1
    return blocks


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


# ------------------------------------------------------------------------------------------ what each page makes
def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _check_readme(folder: Path) -> None:
    assert _json(folder / "runs/digits/metrics.json")["retrieval"]["precision_at_1"] > 0.9
    assert np.load(folder / "emb.npy").shape == (1797, 64) and len(np.load(folder / "labels.npy")) == 1797
    assert (np.load(folder / "pred.npy") == np.load(folder / "labels.npy")).mean() > 0.9
    assert {"tsne.png", "report.html"} <= {p.name for p in (folder / "report").iterdir()}
    assert (folder / "digits-cache" / "index.json").is_file()
    proba = np.load(folder / "proba.npy")
    assert proba.shape[1] == 3 and np.allclose(proba.sum(1), 1, rtol=1e-4)
    assert (folder / "audit.jsonl").is_file()


def _check_tutorial(folder: Path) -> None:
    for name in ("wine", "fortunes"):
        assert (folder / "runs" / name / "model.pt").is_file(), name
        assert "knn" in _json(folder / f"idx-{name}" / "index.json")["attrs"]["calibration"], name
        assert (folder / f"report-{name}" / "report.html").is_file(), name
    assert np.load(folder / "sets.npy").shape == (36, 3) and np.load(folder / "text_sets.npy").shape == (51, 5)
    pred = _json(folder / "pred.json")
    assert len(pred["predictions"]) == 51 and pred["classes"] == ["food", "law", "medicine", "pets", "sports"]


CHECKS: dict[str, Callable[[Path], None]] = {"README.md": _check_readme, "docs/tutorial.md": _check_tutorial}


# ----------------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``metriclearn``, ``python`` and ``python3`` of this interpreter, to put first on PATH."""
    folder = tmp_path_factory.mktemp("bin")
    for name, command in (("metriclearn", f'exec "{sys.executable}" -m metriclearn "$@"'),
                          ("python", f'exec "{sys.executable}" "$@"'), ("python3", f'exec "{sys.executable}" "$@"')):
        (folder / name).write_text(f"#!/bin/sh\n{command}\n", encoding="utf-8")
        (folder / name).chmod(0o755)
    return folder


def _environment(bin_dir: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _limit_cpu() -> None:
    """In the child: every process of the block (each command) gets ``COMMAND_CPU_S`` seconds of CPU, then
    SIGXCPU/SIGKILL. CPU time, unlike wall time, does not depend on how busy the machine is."""
    resource.setrlimit(resource.RLIMIT_CPU, (COMMAND_CPU_S, COMMAND_CPU_S + 5))


def _run_block(block: Block, folder: Path, scripts: Path, env: dict[str, str]) -> None:
    # The script starts with blank lines, so the line numbers in an error are the page's own.
    padding = "\n" * (block.line - 1)
    name = block.where.replace("/", "_").replace(":", "-")
    if block.lang == "bash":
        script = scripts / f"{name}.sh"
        script.write_text("trap 'echo \"failed at line $LINENO: $BASH_COMMAND\" >&2' ERR\n"
                          + padding[1:] + block.code, encoding="utf-8")
        command = ["bash", "-euo", "pipefail", str(script)]
    else:  # -c, as typed at a prompt in the folder: the folder is on sys.path (a block may import margin.py)
        command = [sys.executable, "-c", padding + block.code]
    started, cpu = time.perf_counter(), _children_cpu()
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=HANG_S,
                              stdin=subprocess.DEVNULL, preexec_fn=_limit_cpu)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: the {block.lang} block still ran after {HANG_S} s\n{block.code}")
    print(f"{block.where}: {block.lang} block, {time.perf_counter() - started:.1f} s wall, "
          f"{_children_cpu() - cpu:.1f} s CPU")  # shown by pytest -rP
    if done.returncode:
        output = (done.stdout + done.stderr)[-6000:]
        if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            output += (f"\n(a process used its {COMMAND_CPU_S} s of CPU: make the block faster or mark it "
                       "'<!-- skip: takes minutes -->')")
        pytest.fail(f"{block.where}: the {block.lang} block exited {done.returncode}\n{block.code}"
                    f"--- output ---\n{output}", pytrace=False)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_page_runs(page: Path, tmp_path: Path, bin_dir: Path) -> None:
    """Every bash and python block of the page exits 0, run in page order in one fresh folder."""
    folder, scripts = tmp_path / "work", tmp_path / "blocks"
    scripts.mkdir()
    shutil.copytree(REPO / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    env = _environment(bin_dir)
    ran = 0
    for block in parse_blocks(page):
        if block.file:
            (folder / block.file).parent.mkdir(parents=True, exist_ok=True)
            (folder / block.file).write_text(block.code, encoding="utf-8")
        elif block.lang in RUN and not block.skip:
            _run_block(block, folder, scripts, env)
            ran += 1
    check = CHECKS.get(_page_id(page))
    if check is not None:
        check(folder)
    elif not ran:
        pytest.skip(f"{_page_id(page)} has no block to run")


MARKED = [b for page in PAGES for b in parse_blocks(page) if b.skip and b.lang in RUN]


@pytest.mark.parametrize("block", MARKED, ids=lambda b: b.where)
def test_marked_block_is_skipped(block: Block) -> None:
    """One skipped test per marked block, so its reason shows in the report (``pytest -ra``)."""
    pytest.skip(f"{block.where}: {block.skip}")


def test_every_fence_names_a_language_the_harness_knows() -> None:
    """A block in ```sh, ```shell, ```py or no language at all would silently escape the harness."""
    escaping = [f"{b.where} ```{b.lang}" for page in PAGES for b in parse_blocks(page)
                if b.lang in ("", "sh", "shell", "console", "py", "python3", "pycon")]
    assert not escaping, f"use ```bash or ```python (or ```text for output): {escaping}"


def test_parser_reads_markers_indented_fences_and_line_numbers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n<!-- skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n- item\n\n  ```python\n"
                    "  print(1)\n  ```\n<!-- file: a.toml -->\n```toml\nx = 1\n```\n", encoding="utf-8")
    gpu, item, toml = parse_blocks(page)
    assert (gpu.lang, gpu.line, gpu.code, gpu.skip) == ("bash", 5, "nvidia-smi\n", "needs a GPU")
    assert (item.lang, item.line, item.code, item.skip) == ("python", 11, "print(1)\n", None)
    assert (toml.file, toml.code) == ("a.toml", "x = 1\n")
    page.write_text("<!-- skip: -->\n```bash\nls\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs a value"):
        parse_blocks(page)
    page.write_text("```bash\nls\n", encoding="utf-8")
    with pytest.raises(ValueError, match="never closed"):
        parse_blocks(page)
