"""CLI start-up time: ``metriclearn --help``, ``metriclearn COMMAND --help`` and each command's own imports.

Every measurement is a fresh ``python`` subprocess (nothing cached in the interpreter; the OS file cache is
warm after the first run, as it is for a user typing commands), repeated ``--repeats`` times; the median wall
time is reported, with the heavy libraries the call imported. "Imports" loads what the command's code imports
before it reads any input (its module, then the modules its first lines import), so it is the fixed price of
running the command. The old layout (every command and torch imported up front) is not kept, so the
before-and-after comparison is against ``python -c "import torch"``, the floor of the old start-up.

    python benchmarks/bench_startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "faiss", "sklearn", "scipy", "umap", "matplotlib", "transformers", "tqdm")

HELP = [[], ["train"], ["embed"], ["evaluate"], ["index", "build"], ["index", "query"], ["index", "info"],
        ["calibrate"], ["classify"], ["second-opinion"], ["report"]]

# what each command imports before reading its inputs (see the first lines of each command's function)
IMPORTS = {
    "train": ["metriclearn.training.run", "metriclearn.training.resume"],
    "embed": ["metriclearn.training", "metriclearn.data", "metriclearn.training.run"],
    "evaluate": ["metriclearn.training.run", "metriclearn.data"],
    "index build": ["metriclearn.indexes.faiss_index", "metriclearn.data"],
    "index info": ["metriclearn.indexes._persist"],
    "classify": ["metriclearn.indexes.faiss_index", "metriclearn.classify.knn", "metriclearn.classify.cache"],
    "report": ["metriclearn.reports.report", "metriclearn.data"],
}

_HELP_SCRIPT = """
import sys
from metriclearn.cli import main
try:
    main({args!r} + ["--help"])
except SystemExit:
    pass
print("HEAVY", [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""

_IMPORT_SCRIPT = """
import importlib, sys
from metriclearn.cli import cli
cli.get_command(None, {command!r})
for name in {modules!r}:
    importlib.import_module(name)
print("HEAVY", [m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""


def timed(code: str, repeats: int) -> tuple[float, list[str]]:
    """Median wall seconds of ``python -c code`` over ``repeats`` fresh processes, and the heavy modules seen."""
    times, heavy = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        heavy = [line for line in done.stderr.splitlines() if line.startswith("HEAVY")]
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    floor, _ = timed("pass", args.repeats)
    torch_s, _ = timed("import torch", args.repeats)
    print(f"python itself: {floor:.3f} s; python -c 'import torch': {torch_s:.3f} s (median of {args.repeats})")
    for command in HELP:
        seconds, heavy = timed(_HELP_SCRIPT.format(args=command, heavy=HEAVY), args.repeats)
        name = "metriclearn " + " ".join([*command, "--help"])
        rows.append({"call": name, "seconds": round(seconds, 3), "heavy": heavy[-1][6:] if heavy else "?"})
        print(f"{name:<40} {seconds:6.3f} s  {rows[-1]['heavy']}")
    for command, modules in IMPORTS.items():
        seconds, heavy = timed(_IMPORT_SCRIPT.format(command=command.split()[0], modules=modules, heavy=HEAVY),
                               args.repeats)
        name = f"{command}: imports"
        rows.append({"call": name, "seconds": round(seconds, 3), "heavy": heavy[-1][6:] if heavy else "?"})
        print(f"{name:<40} {seconds:6.3f} s  {rows[-1]['heavy']}")
    print(json.dumps({"python": floor, "import_torch": torch_s, "rows": rows}))


if __name__ == "__main__":
    main()
