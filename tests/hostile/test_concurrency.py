"""Concurrent processes on one output (issue #25 item 2), with real processes: two calibrations of one index both
land or one is refused (never one silently lost); a reader sees the old index or the new one while another process
re-saves it, never a mix or a false "damaged"; two default ``train`` runs started in the same second get two folders.

Each test starts two Python processes that import faiss / torch (about 2 s each on a loaded machine): that start-up,
not the work, is most of their time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import make_blobs

from metriclearn.indexes import EmbeddingIndex

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _python(code: str, *args: object, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=ENV, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


_CALIBRATE = """
    import sys, time
    from pathlib import Path
    from metriclearn.indexes import EmbeddingIndex

    path, me, rounds, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

    def barrier(name):
        (sync / f"{name}-{me}").touch()
        while len(list(sync.glob(f"{name}-*"))) < 2:
            time.sleep(0.001)

    for r in range(rounds):
        index = EmbeddingIndex.load(path, device="cpu")
        barrier(f"loaded-{r}")  # both hold the same state: a calibration of it each
        index.attrs["calibration"] = {**index.attrs.get("calibration", {}), me: r}
        try:
            index.save_attrs(path)
            print(r, "ok", flush=True)
        except (ValueError, RuntimeError) as exc:
            print(r, "refused", " ".join(str(exc).split()), flush=True)
        barrier(f"saved-{r}")
"""


def test_two_calibrations_at_once_never_lose_one_silently(tmp_path: Path) -> None:
    x, y = make_blobs({0: 40, 1: 23, 2: 9}, dim=8)
    index = EmbeddingIndex(8, metric="l2", device="cpu")
    index.add(x, labels=y)
    index.save(tmp_path / "idx")
    sync = tmp_path / "sync"
    sync.mkdir()
    rounds = 8
    procs = {me: _python(_CALIBRATE, tmp_path / "idx", me, rounds, sync) for me in ("a", "b")}
    lines = {me: _finish(proc).splitlines() for me, proc in procs.items()}
    landed = {r: [me for me in lines if lines[me][r].split()[1] == "ok"] for r in range(rounds)}
    assert all(len(winners) == 1 for winners in landed.values()), lines  # both from one state: exactly one lands
    refusals = [line for me in lines for line in lines[me] if "refused" in line]
    assert len(refusals) == rounds and all("saved again since" in line or "being written" in line
                                           for line in refusals), refusals
    final = EmbeddingIndex.load(tmp_path / "idx", device="cpu").attrs["calibration"]
    last = landed[rounds - 1][0]
    assert final[last] == rounds - 1  # the last success is what the index holds


_RESAVE = """
    import sys
    import numpy as np
    from metriclearn.indexes import EmbeddingIndex

    path, saves = sys.argv[1], int(sys.argv[2])
    versions = []
    for n, label in ((3000, 1), (3500, 2)):
        index = EmbeddingIndex(32, metric="l2", device="cpu")
        index.add(np.random.default_rng(n).standard_normal((n, 32)).astype(np.float32), labels=np.full(n, label))
        versions.append(index)
    for i in range(saves):
        versions[i % 2].save(path)
        if i == 0:
            print("saving", flush=True)
"""


def test_a_reader_sees_the_old_or_the_new_index_while_another_process_resaves_it(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    writer = _python(_RESAVE, path, 400)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "saving"
        seen = set()
        for _ in range(60):
            index = EmbeddingIndex.load(path, device="cpu")  # never "damaged": the index is healthy
            n, labels = len(index), sorted(set(index.labels.tolist()))
            assert (n, labels) in [(3000, [1]), (3500, [2])], (n, labels)  # one whole version, never a mix
            assert len(index.ids) == n and index.faiss_index.ntotal == n
            seen.add(n)
            if writer.poll() is not None:
                break
    finally:
        writer.kill()
        writer.communicate()
    assert seen  # (which versions a reader meets depends on timing; each was whole)


_FROZEN_CLOCK_TRAIN = """
    import datetime, importlib, sys, types

    class Frozen:  # both runs start "in the same second" (metriclearn's own clock only: C extensions keep theirs)
        @staticmethod
        def now(tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5)

    from metriclearn.cli import cli
    for name in ("metriclearn._outdir", "metriclearn.cli.train"):
        module = importlib.import_module(name)
        if getattr(module, "datetime", None) is datetime:
            module.datetime = types.SimpleNamespace(datetime=Frozen)
    cli(sys.argv[1:])
"""


def test_two_default_train_runs_in_the_same_second_get_two_folders(tmp_path: Path) -> None:
    x, y = make_blobs({"a": 30, "b": 19, "c": 11}, dim=5)
    np.savez(tmp_path / "blobs.npz", X=x, y=y)
    args = ["train", "--data", "blobs.npz", "--epochs", "1", "--batch-size", "16", "--encoder", "mlp:8",
            "--embedding-dim", "4", "--device", "cpu", "--quiet"]
    procs = [_python(_FROZEN_CLOCK_TRAIN, *args, cwd=tmp_path) for _ in range(2)]
    outputs = [_finish(proc, timeout=300) for proc in procs]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["20260102-030405", "20260102-030405-2"], (runs, outputs)
    for name in runs:
        assert (tmp_path / "runs" / name / "model.pt").is_file()
        assert json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["epochs"] == 1
