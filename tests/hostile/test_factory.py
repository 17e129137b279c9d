"""Factory strings and index options that faiss does not check are refused before faiss sees them: the values below
crashed the process (segfault, abort), hung it (> 120 s) or built an index whose every query failed or tied.

They run in one child process (one start-up for all cases): a regression that crashes faiss then fails these tests
instead of killing pytest. Each case's outcome is printed as one JSON line as soon as it is known, so the case
that crashed the child is the first one without a line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

CLI_CASES = {  # --kind -> fragments of the one-line error
    "HNSW1,Flat": ["HNSW1", "M >= 2"],  # segfault
    "HNSW0,Flat": ["'HNSW0'", "at least 1"],  # abort
    "NSG0,Flat": ["'NSG0'", "at least 1"],  # ran past 120 s
    "NSG4,Flat": ["NSG4", "R >= 8"],  # never finishes building
    "IVF0,Flat": ["'IVF0'", "at least 1"],  # every query failed
    "PCA0,Flat": ["'PCA0'", "at least 1"],  # every query tied
    "OPQ4_0,PQ4": ["'OPQ4_0'", "at least 1"],  # SIGFPE
    "IVF4_HNSW1,Flat": ["HNSW1", "M >= 2"],  # the coarse quantizer's graph
}
API_CASES = {  # EmbeddingIndex keyword arguments -> fragments of the ValueError
    "hnsw_m=1": ({"kind": "hnsw", "hnsw_m": 1}, ["hnsw_m", "at least 2", "got 1"]),
    "kind=NSG2,Flat": ({"kind": "NSG2,Flat"}, ["NSG2", "R >= 8"]),
}
VALID = ["HNSW2,Flat", "NSG8,Flat", "IVF1,Flat", "PCA8,Flat"]  # the smallest values that work still build and search

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from click.testing import CliRunner
    from metriclearn.cli import cli
    from metriclearn.indexes import EmbeddingIndex
    folder, cli_cases, api_cases, valid = sys.argv[1], *map(json.loads, sys.argv[2:])
    def say(case, **out):
        print(json.dumps({"case": case, **out}), flush=True)
    for kind in cli_cases:
        r = CliRunner().invoke(cli, ["index", "build", "--embeddings", folder + "/emb.npy", "--kind", kind,
                                     "--metric", "l2", "--out", folder + "/idx-" + kind])
        say(kind, exit_code=r.exit_code, output=r.output)
    x = np.load(folder + "/emb.npy")
    for name, options in api_cases.items():
        try:
            EmbeddingIndex(dim=16, metric="l2", **options)
            say(name, error=None)
        except ValueError as exc:
            say(name, error=str(exc))
    for kind in valid:
        index = EmbeddingIndex(dim=16, metric="l2", kind=kind)
        index.add(x)
        say(kind, first=index.search(x[:20], 1)[1][:, 0].tolist())
""")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("factory")
    np.save(folder / "emb.npy", np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [json.dumps(list(CLI_CASES)), json.dumps({k: v[0] for k, v in API_CASES.items()}), json.dumps(VALID)]
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), *args], check=False, capture_output=True,
                          text=True, timeout=120, env=env, cwd=Path(__file__).parent)
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith('{"case"'):
            record = json.loads(line)
            found[record["case"]] = record
    found["_child"] = {"returncode": done.returncode, "stderr": done.stderr[-2000:]}
    return found


@pytest.mark.parametrize("kind", list(CLI_CASES))
def test_cli_refuses_a_factory_string_faiss_would_crash_on(outcomes: dict, kind: str) -> None:
    assert kind in outcomes, f"the child process died before {kind!r}: {outcomes['_child']}"
    record = outcomes[kind]
    lines = record["output"].strip().splitlines()
    assert record["exit_code"] == 1 and len(lines) == 1 and lines[0].startswith("Error: "), record
    for fragment in CLI_CASES[kind]:
        assert fragment in lines[0], record


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses_index_options_faiss_would_crash_on(outcomes: dict, case: str) -> None:
    assert case in outcomes, f"the child process died before {case!r}: {outcomes['_child']}"
    error = outcomes[case]["error"]
    assert error is not None, f"{case} was accepted"
    for fragment in API_CASES[case][1]:
        assert fragment in error, error


@pytest.mark.parametrize("kind", VALID)
def test_smallest_valid_parameters_still_build_and_search(outcomes: dict, kind: str) -> None:
    assert kind in outcomes, f"the child process died before {kind!r}: {outcomes['_child']}"
    hits = np.asarray(outcomes[kind]["first"])
    assert ((hits >= 0) & (hits < 300)).all() and len(set(hits.tolist())) >= 15, hits  # real answers, not ties
    assert (hits == np.arange(20)).mean() >= 0.5, hits  # HNSW2 is a poor graph, but most vectors find themselves
