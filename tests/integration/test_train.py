"""End to end on tiny synthetic data: train, run directory contents, reload, re-evaluate, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys.errors import ConfigError
from recsys.training.evaluate import evaluate_checkpoint
from recsys.training.train import train
from tests.conftest import FAST_TRAINER, TINY_DATA, compose_config

OVERRIDES = TINY_DATA + FAST_TRAINER + ["optim.lr=0.01", "seed=5", "trainer.max_epochs=10"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run")
    metrics = train(compose_config("train", OVERRIDES, out))
    return out, metrics


def test_run_directory_is_complete(run):
    out, metrics = run
    for rel in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "per_user_test.npz",
    ):
        assert (out / rel).is_file(), rel
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"val", "test", "baseline", "data", "timing"}
    assert set(saved["data"]) >= {"n_users", "n_items", "n_train", "n_val", "n_test"}
    assert set(saved["timing"]) >= {"fit_s", "epochs", "s_per_epoch", "eval_s"}
    assert saved["timing"]["epochs"] == 10
    for key in ("ndcg@10", "recall@20", "precision@10", "map@20", "mrr@10", "hit@20"):
        assert 0.0 <= saved["test"][key] <= 1.0
    assert saved["baseline"]["name"] == "popularity"
    assert saved["data"]["n_train"] + saved["data"]["n_val"] + saved["data"]["n_test"] > 0
    # the manifest records the end; each checkpoint, what a resume must match
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["end_time"] and "reason" not in manifest
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert ckpt["recsys_run"] == {
            "seed": 5,
            "data_fingerprint": manifest["data"]["fingerprint"],
            "split_fingerprint": manifest["data"]["split_fingerprint"],
        }
    assert not list(out.rglob("*.tmp"))


def test_every_metric_reaches_tensorboard_at_each_validation(run):
    """Metrics no callback reads skip Lightning's (slow) ``self.log`` and go to the loggers
    directly: TensorBoard still holds every validation and test metric, at the same steps as the
    monitored one, with the values of metrics.json for the test stage."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics = run
    ea = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent))
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    steps = [e.step for e in ea.Scalars("val/ndcg@10")]  # logged through self.log (eval.monitor)
    assert len(steps) == metrics["timing"]["epochs"]
    for key in metrics["val"]:
        assert f"val/{key}" in scalars, key
        assert [e.step for e in ea.Scalars(f"val/{key}")] == steps, key
    for key, value in metrics["test"].items():
        assert ea.Scalars(f"test/{key}")[-1].value == pytest.approx(value, rel=1e-6), key


def test_checkpoint_is_plain_and_reloads_to_identical_metrics(run):
    out, metrics = run
    ckpt = torch.load(out / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["_target_"] == "recsys.models.mf.MF"
    again = evaluate_checkpoint(str(out / "checkpoints/best.ckpt"), accelerator="cpu")
    assert again["test"] == metrics["test"]
    assert again["val"] == metrics["val"]


@pytest.mark.slow
def test_recsys_eval_cli_prints_and_writes_metrics(run, tmp_path):
    out, metrics = run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.eval",
            f"ckpt_path={out}/checkpoints/best.ckpt",
            f"hydra.run.dir={tmp_path}",
            "accelerator=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test"] == metrics["test"]
    assert f"{metrics['test']['ndcg@10']:.4f}" in proc.stdout


@pytest.mark.slow
def test_a_clean_run_prints_no_third_party_notices(tmp_path):
    """The console of a clean ``recsys-train`` run is ours: no Lightning advertisement, no
    deprecation warning raised inside Lightning, no logging-interval warning (recsys logs once
    per epoch). Each is filtered by its exact text (recsys.training.runs.tidy_console)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.train",
            *TINY_DATA,
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "logger=tensorboard",  # the logging-interval warning needs a logger
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout + proc.stderr
    for notice in ("Tip:", "litlogger", "LeafSpec", "smaller than the logging interval"):
        assert notice not in console, (notice, console)
    assert "run directory:" in proc.stdout


def test_mf_beats_popularity_on_synthetic(run):
    _, metrics = run
    assert metrics["test"]["ndcg@10"] > 1.5 * metrics["baseline"]["test"]["ndcg@10"]


def test_resume_reaches_the_uninterrupted_result(tmp_path):
    # lr high enough that validation peaks early: last.ckpt must still be the latest epoch
    base = TINY_DATA + [
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "optim.lr=0.2",
        "seed=5",
        "callbacks.early_stopping=null",
    ]
    full = train(compose_config("train", base + ["trainer.max_epochs=6"], tmp_path / "full"))
    train(compose_config("train", base + ["trainer.max_epochs=4"], tmp_path / "part"))
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    best = tmp_path / "part" / "checkpoints" / "best.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 3
    assert torch.load(best, weights_only=True)["epoch"] < 3
    resumed = train(
        compose_config(
            "train", base + ["trainer.max_epochs=6", f"ckpt_path={last}"], tmp_path / "other"
        )
    )
    assert resumed["test"] == full["test"]
    assert resumed["val"] == full["val"]
    # the resumed run continues in its own directory
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["test"] == full["test"]
    assert resumed["timing"]["epochs"] == 2


def test_steps_per_call_makes_the_same_updates(tmp_path, monkeypatch):
    """K batches per Lightning step (manual optimization) = one step per batch: same weights,
    same metrics and optimizer-step count, whether or not K divides the number of batches, and
    with the loss axis's multi-term outputs (reg > 0); both through the direct backward/step
    path this single-process fp32 run takes and through Lightning's own wrappers."""
    from recsys.training.module import RecModule

    direct_step = RecModule._direct_steps
    taken: list[bool] = []

    def spy(self, opt):
        ok = direct_step(self, opt) and not force_lightning
        taken.append(ok)
        return ok

    monkeypatch.setattr(RecModule, "_direct_steps", spy)
    force_lightning = False
    base = TINY_DATA + [
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "~logger",
        "data.batch_size=500",  # ~12 batches per epoch: groups of 5, 5 and the rest
        "model.reg=0.01",
        "optim.lr=0.05",
        "seed=3",
        "trainer.max_epochs=3",
        "callbacks.early_stopping=null",
    ]
    runs = {
        k: train(compose_config("train", base + [f"optim.steps_per_call={k}"], tmp_path / str(k)))
        for k in (1, 5)
    }
    assert taken and all(taken)  # the K=5 run took the direct path
    force_lightning, taken[:] = True, []
    runs["5L"] = train(compose_config("train", base + ["optim.steps_per_call=5"], tmp_path / "5L"))
    assert taken and not any(taken)
    states = {
        k: torch.load(tmp_path / str(k) / "checkpoints/last.ckpt", weights_only=True) for k in runs
    }
    for k in (5, "5L"):
        assert runs[k]["test"] == runs[1]["test"], k
        assert runs[k]["val"] == runs[1]["val"], k
        for name, w in states[1]["state_dict"].items():
            assert torch.equal(w, states[k]["state_dict"][name]), (k, name)
        assert states[k]["global_step"] == states[1]["global_step"], k  # optimizer steps


def test_steps_per_call_refuses_lightning_gradient_clipping(tmp_path):
    with pytest.raises(
        ConfigError,
        match="optim.steps_per_call=4 cannot be combined with trainer.gradient_clip_val",
    ):
        train(
            compose_config(
                "train",
                TINY_DATA
                + FAST_TRAINER
                + ["optim.steps_per_call=4", "trainer.gradient_clip_val=1.0"],
                tmp_path,
            )
        )
