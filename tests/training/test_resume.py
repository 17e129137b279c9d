"""Resume that always finishes exactly: kill -9 a seeded CLI run at random moments, resume with the same command.

Each run is a forked child process (the real ``metriclearn`` entry point, after the imports the parent
already paid for) that SIGKILLs itself at a chosen event: before a training step (mid-epoch), right
after the end-of-epoch checkpoint (exactly at an epoch boundary), after an epoch's last batch but before
its end-of-epoch checkpoint (the step checkpoint then holds position == len), or half-way through
writing a checkpoint. The parent also kills one child from outside after a random delay. Every time,
the very same command plus ``--resume`` continues, and the final weights equal an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from metriclearn.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _digits_subset(path) -> str:
    X, y = load_digits(return_X_y=True)
    keep = np.concatenate([np.flatnonzero(y == c)[: 24 + 3 * c] for c in range(6)])  # uneven: 24..39 per class
    np.savez(path, X=X[keep].astype(np.float32), y=y[keep])
    return str(path)


def _arm(kind: str, n: int) -> None:
    """In the child: SIGKILL this process at the n-th event of ``kind``."""
    from metriclearn.training import callbacks, trainer

    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == n

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "step":  # mid-epoch (or at the first batch of an epoch)
        original_step = trainer.Trainer._train_step

        def step(self, *args, **kwargs):
            if hit():
                die()
            return original_step(self, *args, **kwargs)

        trainer.Trainer._train_step = step
    elif kind == "before_epoch_end":  # after the epoch's last batch (and its step checkpoint), before epoch end
        original_validate = trainer.Trainer.validate

        def validate(self, *args, **kwargs):
            if hit():
                die()
            return original_validate(self, *args, **kwargs)

        trainer.Trainer.validate = validate
    elif kind == "boundary":  # right after the end-of-epoch checkpoint
        original_end = callbacks.ModelCheckpoint.on_epoch_end

        def on_epoch_end(self, trainer_, epoch, logs):
            original_end(self, trainer_, epoch, logs)
            if hit():
                die()

        callbacks.ModelCheckpoint.on_epoch_end = on_epoch_end
    elif kind == "write":  # half-way through writing a checkpoint file
        from metriclearn._atomic import save_with

        original_save = callbacks.ModelCheckpoint.save

        def save(path, state):
            if not hit():
                return original_save(path, state)

            def torn(name: str) -> None:
                torch.save(state, name)
                with open(name, "r+b") as fh:
                    fh.truncate(os.path.getsize(name) // 2)
                die()

            save_with(path, torn)

        callbacks.ModelCheckpoint.save = staticmethod(save)
    else:
        raise ValueError(kind)


def _run(args: list[str], kill: tuple[str, int] | None = None, kill_after_s: float | None = None) -> str:
    """Run ``metriclearn ARGS`` in a forked child; return "ok", "failed" or "killed"."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if kill is not None:
                _arm(*kill)
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    if kill_after_s is not None:
        deadline = time.monotonic() + kill_after_s
        while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.01)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by the WNOHANG poll above: it finished (or died) before the kill
        return "ok"
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    return "ok" if os.WEXITSTATUS(status) == 0 else "failed"


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def _losses(run_dir) -> list[str]:
    with open(run_dir / "log.csv", newline="") as fh:
        return [row["loss"] for row in csv.DictReader(fh)]


@pytest.mark.parametrize(
    ("scheduler", "checkpoint_every", "seed"),
    [("onecycle", "0", 11), ("cosine", "0", 12), ("onecycle", "3", 13), ("cosine", "3", 14)],
)
def test_kill_loop_resume_with_the_same_command_gives_identical_weights(tmp_path, scheduler, checkpoint_every,
                                                                        seed) -> None:
    data = _digits_subset(tmp_path / "digits6.npz")  # 189 rows, 6 classes; 152 train rows = 4 batches of 40
    command = ["train", "--data", data, "--epochs", "3", "--batch-size", "40", "--samples-per-class", "4",
               "--encoder", "mlp:16", "--embedding-dim", "8", "--device", "cpu", "--threads", "1", "--seed", "5",
               "--scheduler", scheduler, "--checkpoint-every", checkpoint_every, "--loss", "neighborhood",
               "--loss", "cache:0.5", "--quiet"]
    with pytest.raises(SystemExit) as done:  # in this process: the children then find every import warm
        main([*command, "--out", str(tmp_path / "straight")])
    assert done.value.code == 0

    out = tmp_path / "killed"
    rng = random.Random(seed)
    kills = [("before_epoch_end", 1), ("write", rng.randint(1, 3)), ("step", rng.randint(2, 6)),
             ("boundary", 1), ("step", rng.randint(1, 4)), ("write", 1)]
    rng.shuffle(kills)
    outcomes = []
    first = True
    for kill in kills:
        outcomes.append(_run([*command, "--out", str(out), *([] if first else ["--resume"])], kill=kill))
        first = False
        assert outcomes[-1] in ("killed", "ok"), (kill, outcomes)
        if outcomes[-1] == "ok":
            break
    if outcomes[-1] != "ok":  # once more from outside, at a random moment, then to the end
        _run([*command, "--out", str(out), "--resume"], kill_after_s=rng.uniform(0.05, 0.5))
        assert _run([*command, "--out", str(out), "--resume"]) == "ok"
    assert outcomes.count("killed") >= 3, outcomes

    a, b = _weights(tmp_path / "straight"), _weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert _losses(out) == _losses(tmp_path / "straight")  # every epoch logged once, with its whole loss
    assert not list(out.glob("**/.*.tmp"))  # the torn writes' temporary files were cleaned up
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["global_step"] == 3 * 4


def test_callback_state_follows_its_state_key_not_its_position(tmp_path) -> None:
    from metriclearn.training import EarlyStopping, LambdaCallback, ModelCheckpoint, Trainer
    from metriclearn.training.objectives import build_objective

    X, y = load_digits(return_X_y=True)
    X, y = X[:200].astype(np.float32), y[:200]

    def trainer(callbacks):
        model = torch.nn.Linear(64, 8)
        torch.manual_seed(0)
        return Trainer(model, build_objective([("neighborhood", 1.0)], 8, 10), batch_size=40, device="cpu",
                       verbose=False, callbacks=callbacks)

    first = trainer([EarlyStopping("loss", patience=5, mode="min"), ModelCheckpoint(tmp_path, "loss", "min")])
    first.fit((X, y), epochs=2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(state["callbacks"]) == {"EarlyStopping{'monitor': 'loss', 'mode': 'min'}",
                                       "ModelCheckpoint{'monitor': 'loss', 'mode': 'min'}", }
    best = state["callbacks"]["ModelCheckpoint{'monitor': 'loss', 'mode': 'min'}"]["best"]
    assert best == pytest.approx(min(row["loss"] for row in first.history))
    # resumed with a new callback in front and the order changed: each state still reaches its owner
    stop, checkpoint = EarlyStopping("loss", patience=5, mode="min"), ModelCheckpoint(tmp_path, "loss", "min")
    resumed = trainer([LambdaCallback(on_epoch_end=lambda t, e, logs: None), checkpoint, stop])
    resumed.fit((X, y), epochs=2, resume_from=tmp_path / "last.pt")
    assert checkpoint.best == best and stop.best == state["callbacks"]["EarlyStopping{'monitor': 'loss', 'mode': 'min'}"]["best"]
    with pytest.raises(ValueError, match="callbacks share the state_key \"EarlyStopping"):
        trainer([EarlyStopping("loss", mode="min"), EarlyStopping("loss", mode="min")]).fit((X, y), epochs=1)


def test_early_stop_is_kept_across_a_kill_before_the_model_is_written(tmp_path) -> None:
    from metriclearn.training import TrainConfig, run_state, train_run
    from metriclearn.training import run as run_module

    config = TrainConfig(data=_digits_subset(tmp_path / "d.npz"), epochs=6, batch_size=40, samples_per_class=4,
                         encoder="mlp:16", embedding_dim=8, device="cpu", lr=1e-9, patience=1, monitor="loss")
    straight = train_run(config, tmp_path / "straight", verbose=False)
    assert straight["epochs"] < 6

    original = run_module.save_model

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    run_module.save_model = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            train_run(config, tmp_path / "r", verbose=False)
    finally:
        run_module.save_model = original
    assert run_state(tmp_path / "r") == "partial"
    resumed = train_run(config, tmp_path / "r", resume=True, verbose=False)
    assert resumed["epochs"] == straight["epochs"]  # no epoch trained after the early stop
    assert run_state(tmp_path / "r") == "finished"
    with pytest.raises(ValueError, match="is a finished run .*nothing to resume"):
        train_run(config, tmp_path / "r", resume=True, verbose=False)


def test_a_resumed_run_keeps_the_centroid_movie_of_the_epochs_before_the_kill(tmp_path) -> None:
    from PIL import Image

    from metriclearn.training import TrainConfig, train_run
    from metriclearn.training import trainer as trainer_module

    config = TrainConfig(data=_digits_subset(tmp_path / "d.npz"), epochs=4, batch_size=40, samples_per_class=4,
                         encoder="mlp:16", embedding_dim=8, device="cpu", report=True)
    steps = {"n": 0}
    original = trainer_module.Trainer._train_step

    def step(self, *args, **kwargs):  # killed at the first step of epoch 3 (4 steps an epoch)
        steps["n"] += 1
        if steps["n"] == 9:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    trainer_module.Trainer._train_step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            train_run(config, tmp_path / "r", verbose=False)
    finally:
        trainer_module.Trainer._train_step = original
    train_run(config, tmp_path / "r", resume=True, verbose=False)
    with Image.open(tmp_path / "r" / "report" / "centroids.gif") as gif:
        assert gif.n_frames == 4  # epochs 1-2 from the checkpoint, 3-4 after the resume
