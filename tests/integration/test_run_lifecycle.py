"""A run records how it ended, a resume continues the same experiment or refuses, and the
commands that consume a run refuse an unfinished one.

- SIGINT/SIGTERM mid-training: ``manifest.json`` says ``interrupted``, exit 130/143 with one line,
  no ``metrics.json``; the run resumes from its ``last.ckpt`` and finishes.
- A run that fails after it started: ``failed`` with the one-line reason, nothing finished-looking.
- A resume with another seed, model, data or optimizer setting, or on changed raw data, is
  refused naming the difference before any epoch; so is one into a run still running.
- ``recsys-eval``, ``-export``, ``-segment`` and ``-compare`` refuse an interrupted run (exit 2,
  one line) unless told to accept it.
- Checkpoints are written whole or not at all.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recsys.errors import CheckpointError, DataError
from recsys.training.train import train
from tests.conftest import TINY_DATA, compose_config

BASE = TINY_DATA + [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "~logger",
    "eval.baseline=null",
    "seed=5",
]


def command(module: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    """A recsys command as a user runs it: a subprocess, one OpenMP thread."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kw,
    )


def assert_one_line(proc: subprocess.CompletedProcess, code: int, *parts: str) -> str:
    """Exit ``code``, no traceback, the last line of stderr an ``error:`` line holding ``parts``."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for part in parts:
        assert part in last, last
    return last


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes: what a refused command must leave as is."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    train(compose_config("train", BASE + ["trainer.max_epochs=2"], out))
    assert manifest(out)["status"] == "finished" and "reason" not in manifest(out)
    return out


@pytest.fixture(scope="module")
def interrupted_run(finished_run, tmp_path_factory) -> Path:
    """A run as an interruption leaves it: checkpoints, a manifest saying interrupted, no
    metrics.json."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    shutil.copytree(finished_run, out)
    m = manifest(out)
    m.update(status="interrupted", reason="interrupted by SIGTERM")
    (out / "manifest.json").write_text(json.dumps(m))
    for name in ("metrics.json", "per_user_test.npz"):
        (out / name).unlink()
    return out


# -- how a run ends -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_training_records_interrupted_and_the_run_resumes(tmp_path, sig):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "out.txt", "w")
    args = BASE + ["trainer.max_epochs=1000", "callbacks.early_stopping=null"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli.train", *args, f"hydra.run.dir={run_dir}"],
        stdout=log,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # an epoch has been trained and checkpointed
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert manifest(run_dir)["status"] == "running"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    log.close()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert_one_line(
        done,
        128 + sig,
        f"error: interrupted by {sig.name}; run {run_dir} recorded as interrupted "
        f"(resume with ckpt_path={last})",
    )
    m = manifest(run_dir)
    assert m["status"] == "interrupted" and m["reason"] == f"interrupted by {sig.name}"
    assert m["end_time"] is not None
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "per_user_test.npz").exists()
    assert not list(run_dir.rglob("*.tmp"))

    # the interrupted run continues from its last checkpoint and finishes
    epoch = torch.load(last, weights_only=True)["epoch"]
    resumed = train(
        compose_config(
            "train",
            args + [f"trainer.max_epochs={epoch + 2}", f"ckpt_path={last}"],
            tmp_path / "unused",
        )
    )
    assert resumed["timing"]["epochs"] == 1
    assert manifest(run_dir)["status"] == "finished" and "reason" not in manifest(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == resumed["test"]


def test_a_failing_run_records_failed_with_the_one_line_reason(tmp_path, monkeypatch):
    from recsys.training.module import RecModule

    def broken_row(self, batch, batch_idx):
        raise DataError("data.path: log.csv, line 7: item is empty")

    monkeypatch.setattr(RecModule, "training_step", broken_row)
    with pytest.raises(DataError):
        train(compose_config("train", BASE + ["trainer.max_epochs=2"], tmp_path / "a"))
    m = manifest(tmp_path / "a")
    assert m["status"] == "failed" and m["end_time"] is not None
    assert m["reason"] == "data.path: log.csv, line 7: item is empty"
    assert not (tmp_path / "a" / "metrics.json").exists()

    def bug(self, batch, batch_idx):
        raise RuntimeError("shapes (3, 4) and (5,) do not match\nmore detail")

    monkeypatch.setattr(RecModule, "training_step", bug)
    with pytest.raises(RuntimeError):
        train(compose_config("train", BASE + ["trainer.max_epochs=2"], tmp_path / "b"))
    assert manifest(tmp_path / "b")["reason"] == "RuntimeError: shapes (3, 4) and (5,) do not match"


@pytest.mark.slow
def test_cli_failure_after_the_start_exits_2_and_records_failed(tmp_path):
    run_dir = tmp_path / "run"
    script = (
        "import sys\n"
        "from recsys.errors import DataError\n"
        "from recsys.training.module import RecModule\n"
        "def broken(self, batch, batch_idx):\n"
        "    raise DataError('data.path: log.csv, line 7: item is empty')\n"
        "RecModule.training_step = broken\n"
        "from recsys.cli.train import main\n"
        f"sys.argv = ['recsys-train', *{BASE!r}, 'hydra.run.dir={run_dir}']\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert_one_line(proc, 2, "error: data.path: log.csv, line 7: item is empty")
    m = manifest(run_dir)
    assert m["status"] == "failed" and m["reason"] == "data.path: log.csv, line 7: item is empty"
    assert not (run_dir / "metrics.json").exists()


def test_a_fit_that_swallows_an_interrupt_is_not_evaluated(tmp_path, monkeypatch):
    """Lightning versions that catch a KeyboardInterrupt inside fit return normally with the
    trainer marked interrupted: the run is recorded as interrupted, nothing is evaluated."""
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import TrainerStatus

    from recsys.errors import Interrupted

    def swallowed(self, *args, **kwargs):
        self.state.status = TrainerStatus.INTERRUPTED

    monkeypatch.setattr(pl.Trainer, "fit", swallowed)
    with pytest.raises(Interrupted, match="interrupted by SIGINT"):
        train(compose_config("train", BASE + ["trainer.max_epochs=2"], tmp_path))
    assert manifest(tmp_path)["status"] == "interrupted"
    assert not (tmp_path / "metrics.json").exists()


def test_signals_raise_once_per_interruption_and_an_end_is_recorded_through_wrappers(tmp_path):
    """SIGTERM raises Interrupted; a second one while it unwinds is ignored, a third raises
    again; the handlers are restored after. An interruption that arrived inside code wrapping
    it in its own error (torch.save's RuntimeError) is recorded, and propagates, as itself."""
    from recsys.errors import Interrupted
    from recsys.training.manifest import interruptible, recording_end, start_manifest

    seen = []
    before = signal.getsignal(signal.SIGTERM)
    with interruptible():
        for _ in range(3):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                seen.append("ignored")
            except Interrupted as e:
                seen.append(str(e))
    assert seen == ["interrupted by SIGTERM", "ignored", "interrupted by SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) == before

    m = start_manifest(tmp_path, {"seed": 0}, "fp", "cpu")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(Interrupted):
        with recording_end(tmp_path, m, ["metrics.json"]):
            try:
                raise Interrupted(signal.SIGINT)
            except Interrupted:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    assert manifest(tmp_path)["status"] == "interrupted"
    assert manifest(tmp_path)["reason"] == "interrupted by SIGINT"
    assert not (tmp_path / "metrics.json").exists()


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A save that dies half-way (the process killed, a full disk) leaves the previous
    checkpoint intact and no temporary file."""
    import recsys.training.callbacks as callbacks

    io = callbacks.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt"
    ]
    assert torch.load(path, weights_only=True)["epoch"] == 1


# -- a resume continues the same experiment -----------------------------------------------------
@pytest.mark.parametrize(
    "override, difference",
    [
        ("seed=6", "seed 5 != 6"),
        ("data.min_user_interactions=2", "data.min_user_interactions 0 != 2"),
        ("model.embedding_size=16", "model.embedding_size 64 != 16"),
        ("optim.lr=0.5", "optim.lr 0.001 != 0.5"),
    ],
)
def test_resume_into_another_experiment_is_refused_naming_it(
    finished_run, tmp_path, override, difference
):
    before = snapshot(finished_run)
    last = finished_run / "checkpoints" / "last.ckpt"
    args = BASE + ["trainer.max_epochs=4", override, f"ckpt_path={last}"]
    with pytest.raises(CheckpointError) as e:
        train(compose_config("train", args, tmp_path / "unused"))
    assert str(e.value).startswith(f"ckpt_path: {last} belongs to another experiment")
    assert difference in str(e.value)
    assert snapshot(finished_run) == before  # nothing trained, nothing rewritten
    assert not (tmp_path / "unused").exists()


def test_resume_on_changed_raw_data_is_refused_before_any_epoch(tmp_path):
    from recsys.data.synthetic import generate

    df, _ = generate(n_users=200, n_items=80, n_groups=2, mean_length=20, seed=1)
    log = tmp_path / "log.csv"
    df.rename(columns={"user": "user_id", "item": "item_id"}).to_csv(log, index=False)
    args = [
        *BASE,
        "data=csv",
        f"data.path={log}",
        "data.columns.time=time",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    args = [a for a in args if not a.startswith(("data.n_", "data.mean_length"))]
    run_dir = tmp_path / "run"
    train(compose_config("train", args + ["trainer.max_epochs=1"], run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before = snapshot(run_dir)
    # the same file name and settings, other events: one user's last item changes
    changed = df.copy()
    row = changed.index[-1]
    changed.loc[row, "item"] = (changed.loc[row, "item"] + 1) % 80
    changed.rename(columns={"user": "user_id", "item": "item_id"}).to_csv(log, index=False)
    with pytest.raises(CheckpointError) as e:
        resume = args + ["trainer.max_epochs=3", f"ckpt_path={last}"]
        train(compose_config("train", resume, tmp_path / "unused"))
    assert "split fingerprint" in str(e.value) and "raw data files changed" in str(e.value)
    assert snapshot(run_dir) == before


def test_resume_into_a_run_still_running_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        m = manifest(run_dir)
        m.update(status="running", end_time=None, host=platform.node(), pid=alive.pid)
        (run_dir / "manifest.json").write_text(json.dumps(m))
        last = run_dir / "checkpoints" / "last.ckpt"
        args = BASE + ["trainer.max_epochs=4", f"ckpt_path={last}"]
        cfg = compose_config("train", args, tmp_path / "unused")
        with pytest.raises(CheckpointError, match=rf"is still running \(process {alive.pid}\)"):
            train(cfg)
    finally:
        alive.kill()
        alive.wait()


# -- consumers refuse an unfinished run ----------------------------------------------------------
@pytest.mark.slow
def test_commands_refuse_an_interrupted_run_in_one_line(interrupted_run, tmp_path):
    before = snapshot(interrupted_run)
    best = interrupted_run / "checkpoints" / "best.ckpt"
    why = f"run {interrupted_run} is interrupted (interrupted by SIGTERM)"
    cases = {
        "eval": ("recsys.cli.eval", [f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 'e'}"]),
        "export": ("recsys.cli.export", [f"run={interrupted_run}", f"out={tmp_path / 'art'}"]),
        "segment": (
            "recsys.cli.segment",
            [f"run={interrupted_run}", "features=rfm", "k=2", f"out={tmp_path / 'seg'}"],
        ),
    }
    for module, args in cases.values():
        proc = command(module, args)
        assert_one_line(proc, 2, why, "allow_unfinished=true")
    proc = command("recsys.cli.compare", [str(interrupted_run), "--out", str(tmp_path / "c")])
    assert_one_line(proc, 2, f"{interrupted_run}: run is interrupted", "--allow-unfinished")
    assert not any((tmp_path / d).exists() for d in ("art", "seg", "c"))
    assert not (tmp_path / "e" / "metrics.json").exists()
    assert snapshot(interrupted_run) == before


def test_an_interrupted_run_is_used_when_allowed(interrupted_run, tmp_path, capsys):
    from recsys.customer.segments import segment
    from recsys.serving.export import export
    from recsys.training.compare import compare
    from recsys.training.evaluate import evaluate_checkpoint

    best = interrupted_run / "checkpoints" / "best.ckpt"
    with pytest.raises(CheckpointError, match="is interrupted"):
        evaluate_checkpoint(best, tmp_path / "e")
    got = evaluate_checkpoint(best, tmp_path / "e", accelerator="cpu", allow_unfinished=True)
    assert 0 <= got["test"]["ndcg@10"] <= 1
    assert "using its checkpoint (allow_unfinished=true)" in capsys.readouterr().err
    art = export(
        ckpt_path=best, out=tmp_path / "art", torchscript=False, onnx=False, allow_unfinished=True
    )
    assert (Path(art) / "weights.pt").is_file()
    seg = segment(
        run=str(interrupted_run),
        features="rfm",
        k=2,
        plot=False,
        out=str(tmp_path / "seg"),
        allow_unfinished=True,
    )
    assert seg["k"] == 2
    # compare reads results: an interrupted run has none to compare
    with pytest.raises(DataError, match="no metrics.json"):
        compare([str(interrupted_run)], ["test/ndcg@10"], allow_unfinished=True)
