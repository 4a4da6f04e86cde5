"""A real Optuna study through the CLI (recsys' sweeper, hydra_plugins/recsys_optuna_sweeper) on
tiny synthetic data, tracked in MLflow next to TensorBoard:

- a planted bad configuration (learning rate 1e-6, enqueued after a good one) is pruned from
  its validation curve before the last epoch; a planted invalid one (a negative embedding
  size) fails, is recorded, and the study goes on;
- the sweep is killed once two trials have finished and run again with the same command: the
  finished trials are not rerun, the interrupted one is, and the study ends with n_trials;
- the best trial's experiment file reproduces its validation metric;
- the sweep is one MLflow experiment (named after the study) with one parent run and a nested
  run per trial.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="needs the sweep extra: pip install -e '.[sweep]'")

N_TRIALS = 4
MAX_EPOCHS = 4
GOOD = {"optim.lr": 0.05, "model.embedding_size": 16}
PLANTED = {"optim.lr": 1e-6, "model.embedding_size": 16}  # learns nothing in a few epochs
INVALID = {"optim.lr": 0.05, "model.embedding_size": -1}  # fails before training
SEARCH = f"""# @package _global_
defaults:
  - override /model: mf
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: random
hydra:
  mode: MULTIRUN
  sweeper:
    study_name: tiny
    n_trials: {N_TRIALS}
    sampler:
      seed: 7
    pruner:
      n_startup_trials: 1
      n_warmup_steps: 0
    params:
      optim.lr: tag(log, interval(1e-6, 0.1))
      model.embedding_size: choice(8, 16, -1)
    enqueue:
      - {json.dumps(GOOD)}
      - {json.dumps(PLANTED)}
      - {json.dumps(INVALID)}
"""
TINY = [
    "data.n_users=120",
    "data.n_items=60",
    "data.mean_length=12",
    "data.n_groups=3",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    f"trainer.max_epochs={MAX_EPOCHS}",
    "eval.baseline=null",
]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store, mlruns/mlflow.db under cwd
    return env


def _finished(db: Path, states: str = "'COMPLETE','PRUNED'") -> list[int]:
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as c:
            rows = c.execute(f"SELECT number FROM trials WHERE state IN ({states})")
            return sorted(r[0] for r in rows)
    except sqlite3.Error:  # tables not created yet
        return []


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The sweep, killed after two finished trials, then resumed to the end."""
    pytest.importorskip("mlflow", reason="needs the track extra: pip install -e '.[track]'")
    out = tmp_path_factory.mktemp("optuna")
    (out / "cfg" / "hparams_search").mkdir(parents=True)
    (out / "cfg" / "hparams_search" / "tiny_optuna.yaml").write_text(SEARCH)
    sweep = out / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli.train",
        "-m",
        "-cd",
        str(out / "cfg"),
        "hparams_search=tiny_optuna",
        "logger=[tensorboard,mlflow]",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    ]
    first = subprocess.Popen(
        cmd,
        cwd=out,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    while len(_finished(sweep / "optuna.db")) < 2:
        assert first.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "no two finished trials in time"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _finished(sweep / "optuna.db", "'COMPLETE','PRUNED','FAIL'")
    snapshot = {
        n: (sweep / str(n) / "metrics.json").read_bytes()
        for n in before
        if (sweep / str(n) / "metrics.json").is_file()
    }
    second = subprocess.run(cmd, cwd=out, env=_env(), capture_output=True, text=True, timeout=600)
    # the invalid trial's failure, reported; on failure: what the first session finished, the
    # failure records and both output tails
    records = sorted(p.name for p in (sweep / "failures").glob("*"))
    assert second.returncode == 1, (before, records, second.stdout[-3000:], second.stderr[-3000:])
    assert "run(s) of the sweep failed" in second.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{sweep / 'optuna.db'}")
    return out, sweep, before, snapshot, second, study


def _trial(study, params):
    """The finished trial with ``params``: if the kill interrupted one with them, its rerun."""
    matches = [t for t in study.trials if t.params == params and t.state.is_finished()]
    matches = [t for t in matches if not t.user_attrs.get("interrupted")] or matches
    assert matches, params
    return matches[0]


@pytest.mark.slow
def test_planted_bad_configuration_is_pruned(study_run):
    _, sweep, _, _, second, study = study_run
    bad = _trial(study, PLANTED)
    assert bad.state == optuna.trial.TrialState.PRUNED
    stopped = bad.user_attrs["pruned_after_epoch"]
    assert 1 <= stopped < MAX_EPOCHS
    assert len(bad.intermediate_values) == stopped  # it trained no further epoch
    good = _trial(study, GOOD)
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert len(good.intermediate_values) == MAX_EPOCHS
    results = (sweep / "optimization_results.yaml").read_text()
    assert f"trial: {bad.number}" in results and f"after_epoch: {stopped}" in results
    assert f"{stopped} (pruned)" in second.stdout  # the sweep's closing table
    rows = (sweep / "trials.csv").read_text().splitlines()
    assert any(r.startswith(f"{bad.number},PRUNED,") for r in rows)


@pytest.mark.slow
def test_failed_trial_is_recorded_and_skipped(study_run):
    _, sweep, _, _, _, study = study_run
    failed = _trial(study, INVALID)
    assert failed.state == optuna.trial.TrialState.FAIL
    assert not failed.user_attrs.get("interrupted")
    assert "embedding_size must be an integer >= 1" in failed.user_attrs["error"]
    record = json.loads((sweep / "failures" / f"{failed.number:03d}.json").read_text())
    assert record["error"] == failed.user_attrs["error"]
    assert f"trial: {failed.number}" in (sweep / "optimization_results.yaml").read_text()


@pytest.mark.slow
def test_killed_study_resumes_without_rerunning_finished_trials(study_run):
    _, sweep, before, snapshot, second, study = study_run
    assert "resuming study tiny" in second.stdout
    assert f"{len(before)} of {N_TRIALS} trials finished" in second.stdout
    states = optuna.trial.TrialState
    finished = [
        t
        for t in study.trials
        if t.state in (states.COMPLETE, states.PRUNED)
        or (t.state == states.FAIL and not t.user_attrs.get("interrupted"))
    ]
    assert len(finished) == N_TRIALS  # complete, pruned or failed, not counting interrupted
    assert {t.number for t in finished} >= set(before)  # the first session's trials are kept
    for n, content in snapshot.items():  # ... and not run again
        assert (sweep / str(n) / "metrics.json").read_bytes() == content
    new = [t for t in finished if t.number not in before]
    assert new and all(t.number > max(before) for t in new)
    for t in study.trials:  # a trial the kill interrupted is failed and its parameters rerun
        if t.user_attrs.get("interrupted"):
            assert t.state == states.FAIL
            assert any(u.user_attrs.get("rerun_of") == t.number for u in study.trials)
    assert not [t for t in study.trials if t.state == states.RUNNING]


@pytest.mark.slow
def test_best_config_file_reproduces_the_best_trial(study_run):
    out, sweep, _, _, _, study = study_run
    best = study.best_trial
    experiment = sweep / "best" / "experiment" / "tiny_best.yaml"
    assert experiment.is_file()
    text = experiment.read_text()
    assert "override /model: mf" in text and "hydra" not in text.split("defaults:")[1]
    run = out / "rerun"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.train",
            "-cd",
            str(sweep / "best"),
            "experiment=tiny_best",
            f"hydra.run.dir={run}",
            "~logger",
        ],
        cwd=out,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    val = json.loads((run / "metrics.json").read_text())["val"]["ndcg@10"]
    assert val == pytest.approx(best.value, abs=1e-6)


@pytest.mark.slow
def test_sweep_is_one_mlflow_experiment_with_nested_runs(study_run):
    from mlflow.tracking import MlflowClient

    out, sweep, _, _, _, study = study_run
    client = MlflowClient(f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")  # the study's name
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("recsys.kind") == "sweep"]
    assert len(parents) == 1  # the resumed sweep reopened its parent run
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/ndcg_at_10"] == pytest.approx(study.best_value)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/optimization_results.yaml", "sweep/trials.csv", "sweep/best"} <= logged
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trained = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(children) >= len(trained) and len(children) == len(runs) - 1
    assert not [r for r in children if r.info.status == "RUNNING"]  # the killed one: KILLED
    best_dir = str(Path(study.best_trial.user_attrs["run_dir"]).resolve())
    (best,) = [r for r in children if r.data.tags.get("recsys.run_dir") == best_dir]
    assert float(best.data.params["optim.lr"]) == pytest.approx(study.best_params["optim.lr"])
    pruned = _trial(study, PLANTED)
    (cut,) = [
        r
        for r in children
        if r.data.tags.get("recsys.run_dir") == str(Path(pruned.user_attrs["run_dir"]).resolve())
    ]
    assert cut.data.metrics["optuna/pruned_after_epoch"] == pruned.user_attrs["pruned_after_epoch"]
    assert (sweep / "tensorboard").is_dir()  # TensorBoard alongside
