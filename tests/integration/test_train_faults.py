"""A training killed outright (SIGKILL) at random points, then run again, ends as an
uninterrupted run does, and never reads a corrupt state.

Each trial starts ``recsys-train`` as a user would, kills it with SIGKILL (as training starts,
before the first checkpoint; or after a number of epochs and at a moment within the next drawn
from a seeded generator: mid-epoch, around checkpoint writes), checks
what was left (a ``last.ckpt``, when there is one, loads whole; the manifest still says
``running`` and is reported ``killed``), then runs again: a resume from ``last.ckpt`` when there
is one, else a fresh start in the same run directory. One more trial kills the process in the
middle of writing ``last.ckpt`` (the write is slowed down in the child to make that moment
certain). Every trial must end with the test and validation metrics of the uninterrupted run,
and no temporary file left behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recsys.training.manifest import run_state
from recsys.training.train import train
from tests.conftest import compose_config

pytestmark = pytest.mark.slow

EPOCHS = 5
BASE = [
    # ~0.5 s per epoch on one thread: a kill up to 0.3 s after epoch N's line (N <= EPOCHS - 3)
    # always lands before the run ends, however fast the machine
    "data.n_users=3000",
    "data.n_items=300",
    "data.mean_length=40",
    "data.n_groups=4",
    "data.batch_size=256",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "~logger",
    "callbacks.early_stopping=null",  # every run trains every epoch
    "eval.baseline=null",
    "optim.lr=0.01",
    "seed=11",
    f"trainer.max_epochs={EPOCHS}",
]
# the child of the mid-write trial: the second write of last.ckpt stops half-way and waits
MID_WRITE = """
import io, os, sys, time
from pathlib import Path
import recsys.training.callbacks as callbacks

real, count = callbacks.atomic_write, [0]

def atomic_write(path, write):
    if Path(path).name == "last.ckpt":
        count[0] += 1
        if count[0] == 2:
            def half(f):
                buf = io.BytesIO()
                write(buf)
                data = buf.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                print("MID-WRITE", flush=True)
                time.sleep(120)
                f.write(data[len(data) // 2 :])
            return real(path, half)
    return real(path, write)

callbacks.atomic_write = atomic_write
from recsys.cli.train import main
sys.argv = ["recsys-train", *sys.argv[1:]]
main()
"""


def _start(run_dir: Path, out: Path, mid_write: bool = False) -> subprocess.Popen:
    head = ["-c", MID_WRITE] if mid_write else ["-m", "recsys.cli.train"]
    return subprocess.Popen(
        [sys.executable, *head, *BASE, f"hydra.run.dir={run_dir}"],
        stdout=open(out, "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*.tmp")]


def _run_again(run_dir: Path) -> dict:
    """What a user does after a crash: resume from last.ckpt when there is one, else start the
    same run again in its directory."""
    last = run_dir / "checkpoints" / "last.ckpt"
    extra = [f"ckpt_path={last}"] if last.exists() else []
    return train(compose_config("train", BASE + extra, run_dir))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return train(compose_config("train", BASE, tmp_path_factory.mktemp("full") / "run"))


def _check_killed_state(run_dir: Path) -> None:
    """What a SIGKILL leaves is never corrupt: the checkpoints there load whole, the manifest
    (when written) is reported killed, and no results pass for a finished run's."""
    for name in ("last.ckpt", "best.ckpt"):
        path = run_dir / "checkpoints" / name
        if path.exists():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            assert 0 <= ckpt["epoch"] < EPOCHS and ckpt["state_dict"]
    if (run_dir / "manifest.json").exists():
        assert run_state(run_dir) == ("killed", run_state(run_dir)[1])
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("trial", range(3))
def test_killed_at_random_points_then_rerun_ends_as_uninterrupted(uninterrupted, tmp_path, trial):
    rng = random.Random(1000 + trial)
    run_dir, out = tmp_path / "run", tmp_path / "out.txt"
    proc = _start(run_dir, out)
    if trial == 0:  # as training starts, before the first checkpoint: the rerun starts afresh
        _wait_for(proc, lambda: (run_dir / "manifest.json").exists())
    else:  # during training: after a random number of epochs, at a random moment within one
        epochs = rng.randrange(0, EPOCHS - 2)
        _wait_for(proc, lambda: f"epoch {epochs} " in out.read_text())
        time.sleep(rng.uniform(0.0, 0.3))
    _kill(proc)
    _check_killed_state(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").exists() == (trial > 0)

    again = _run_again(run_dir)
    assert again["test"] == uninterrupted["test"]
    assert again["val"] == uninterrupted["val"]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"
    assert not _temporaries(run_dir)


def test_killed_while_writing_a_checkpoint_then_rerun_ends_as_uninterrupted(
    uninterrupted, tmp_path
):
    run_dir, out = tmp_path / "run", tmp_path / "out.txt"
    proc = _start(run_dir, out, mid_write=True)
    _wait_for(proc, lambda: "MID-WRITE" in out.read_text())
    _kill(proc)
    # half of the new last.ckpt is in a temporary file; last.ckpt itself is the previous epoch's
    assert [p.name.startswith(".last.ckpt.") for p in _temporaries(run_dir)] == [True]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    _check_killed_state(run_dir)

    again = _run_again(run_dir)
    assert again["test"] == uninterrupted["test"]
    assert again["val"] == uninterrupted["val"]
    assert again["timing"]["epochs"] == EPOCHS - 1  # resumed after epoch 0
    assert not _temporaries(run_dir)  # the next start removed what the killed write left
