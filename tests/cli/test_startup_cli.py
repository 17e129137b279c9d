"""Issue #19 item 4: ``metriclearn --help`` and every ``COMMAND --help`` load no heavy library.

Start-up *time* is measured in benchmarks/bench_startup.py (BENCHMARKS.md); here, what gets imported, in a
fresh interpreter (this one has torch already).
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import invoke

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
