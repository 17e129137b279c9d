"""Lightning's DDP strategy on 2 CPU processes (gloo) against one process: the global batch, identical caches.

One subprocess run of tests/lightning/ddp_fit.py (Lightning starts the second rank by running it again; two
objectives fitted in the same processes) takes ~30-70 s on a shared 2-core machine: the start-up of two
processes, each importing torch and Lightning. The single-process twin runs here with the same code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="needs the 'lightning' extra")

from conftest import assert_f32_close  # noqa: E402

SCRIPT = Path(__file__).resolve().with_name("ddp_fit.py")


@pytest.fixture(scope="module")
def states(tmp_path_factory) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    from ddp_fit import CONFIGS, fit

    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "2"], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = {f"rank{r}": torch.load(out / f"devices2_rank{r}.pt", weights_only=True) for r in (0, 1)}
    return {"one": {name: fit(name, devices=1) for name in CONFIGS}, **ranks}


@pytest.mark.parametrize("objective", ["sum", "alternate"])
def test_two_ddp_processes_train_the_weights_of_one_process(states, objective) -> None:
    one, rank0 = states["one"][objective], states["rank0"][objective]
    assert int(one["batches_done"]) == int(rank0["batches_done"]) == 10  # global batches, not shards
    for key, value in one.items():
        if key.startswith("objective.terms.cache."):
            continue  # the same rows in another order (each rank's shard in turn): compared across ranks below
        # the same sums in another order, 10 Adam steps: float32 round-off only (a gradient off by the world
        # size, or a step that moved the unused head, shows up at ~1e-3)
        assert_f32_close(rank0[key].numpy(), value.numpy(), gain=10)


def test_cache_and_ema_prototypes_are_identical_on_every_rank(states) -> None:
    rank0, rank1, one = states["rank0"]["sum"], states["rank1"]["sum"], states["one"]["sum"]
    buffers = [k for k in rank0 if k.startswith(("objective.terms.cache.", "objective.terms.prototype."))]
    assert {"objective.terms.cache.cache_embeddings", "objective.terms.prototype.centroids"} <= set(buffers)
    for objective in ("sum", "alternate"):
        for key, value in states["rank0"][objective].items():
            assert torch.equal(value, states["rank1"][objective][key]), (objective, key)
    for key in ("objective.terms.cache.cache_labels", "objective.terms.cache.cache_ids"):  # same samples cached
        assert sorted(rank0[key].tolist()) == sorted(one[key].tolist()), key
