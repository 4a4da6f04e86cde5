"""Experiment trackers (recsys/training/loggers.py): config shapes, several loggers behind one,
and an MLflow run read back through MLflow's own client (params, per-epoch validation and test
metrics, the run's files and, on request, the exported artifact)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from recsys.errors import ConfigError
from recsys.training.loggers import Loggers, build_loggers, logger_specs, mlflow_name
from tests.conftest import compose_config

TB = {"_target_": "pytorch_lightning.loggers.TensorBoardLogger", "name": "tb", "version": ""}


def test_logger_config_shapes():
    assert logger_specs(None) == {}
    assert logger_specs(TB) == {"tensorboardlogger": TB}  # one logger, the older shape
    assert logger_specs({"tensorboard": TB, "mlflow": None}) == {"tensorboard": TB}
    with pytest.raises(ConfigError, match="logger.x: a logger config needs a _target_"):
        logger_specs({"x": {"name": "tb"}})


def test_combinations_compose_into_named_loggers():
    cfg = compose_config("train", ["logger=[tensorboard,mlflow]"])
    assert set(cfg.logger) == {"tensorboard", "mlflow"}
    assert cfg.logger.mlflow._target_ == "recsys.training.loggers.MLflowLogger"
    assert set(compose_config("train", []).logger) == {"tensorboard"}  # the default


def test_one_tensorboard_logger_writes_under_the_run(tmp_path):
    cfg = OmegaConf.to_container(compose_config("train", ["logger=tensorboard"]), resolve=False)
    logger = build_loggers(cfg, tmp_path)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir) == tmp_path / "tensorboard"
    assert build_loggers({**cfg, "logger": None}, tmp_path) is False


def test_several_loggers_behind_one(tmp_path):
    a = TensorBoardLogger(str(tmp_path), name="a", version="")
    b = TensorBoardLogger(str(tmp_path), name="b", version="")
    both = Loggers([a, b])
    both.log_metrics({"val/ndcg@10": 0.5}, step=1)
    both.log_hyperparams({"model.embedding_size": 64}, metrics={"final/val/ndcg@10": 0.5})
    both.save()
    assert both.log_dir == a.log_dir
    for name in ("a", "b"):
        assert list((tmp_path / name).glob("events.out.tfevents.*"))


def test_mlflow_names():
    assert mlflow_name("val/ndcg@10") == "val/ndcg_at_10"
    assert mlflow_name("train/loss") == "train/loss"


@pytest.mark.slow
def test_mlflow_run_reads_back(tmp_path):
    mlflow = pytest.importorskip(
        "mlflow", reason="needs the track extra: pip install -e '.[track]'"
    )
    run = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    epochs = 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli.train",
            "logger=[tensorboard,mlflow]",
            "logger.mlflow.log_artifact=true",
            "logger.mlflow.experiment_name=trackers",
            "data.n_users=120",
            "data.n_items=60",
            "data.mean_length=12",
            "data.n_groups=3",
            "trainer.accelerator=cpu",
            f"trainer.max_epochs={epochs}",
            "eval.baseline=null",
            "model.embedding_size=24",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("trackers")
    (r,) = client.search_runs([experiment.experiment_id])
    assert r.info.status == "FINISHED"
    assert r.data.tags["recsys.run_dir"] == str(run.resolve())
    # the resolved config as params
    params = r.data.params
    assert (
        params["model.embedding_size"] == "24" and params["model._target_"] == "recsys.models.mf.MF"
    )
    assert params["eval.topk"] == "[10, 20]" and params["seed"] == "42"
    # per-epoch validation metrics and the final test metrics, as in metrics.json
    metrics = json.loads((run / "metrics.json").read_text())
    history = client.get_metric_history(r.info.run_id, "val/ndcg_at_10")
    assert len(history) == epochs
    assert r.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test"]["ndcg@10"])
    assert r.data.metrics["final/val/ndcg_at_10"] == pytest.approx(metrics["val"]["ndcg@10"])
    # the run's files, the finished manifest among them, and the exported artifact
    local = Path(client.download_artifacts(r.info.run_id, "run", str(tmp_path / "dl")))
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert json.loads((local / "metrics.json").read_text()) == metrics
    assert (local / "hydra" / "config.yaml").is_file()
    artifact = {a.path for a in client.list_artifacts(r.info.run_id, "artifact")}
    assert "artifact/manifest.json" in artifact
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard alongside
