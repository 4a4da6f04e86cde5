"""``recsys-train``: train one model on one dataset, evaluate it, leave a complete run directory.

    recsys-train model=mf data=synthetic data.n_users=5000 trainer.max_epochs=20 seed=7

The run directory (``hydra.run.dir``) receives the composed config (``.hydra/``), checkpoints
(``checkpoints/best.ckpt``, ``last.ckpt``), TensorBoard events (``tensorboard/``), per-user test
metrics (``per_user_test.npz``) and ``metrics.json``, the run's machine-readable summary.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from recsys.errors import CheckpointError
from recsys.files import write_json
from recsys.training.checks import validate_config
from recsys.training.loggers import build_loggers
from recsys.training.manifest import end_manifest, split_fingerprint, start_manifest
from recsys.training.results import (
    baseline,
    format_table,
    group_labels,
    group_metrics,
    metrics_record,
)
from recsys.training.runs import (
    EVAL_KEYS,
    datamodule_from_config,
    evaluate,
    load_checkpoint,
    module_for,
    module_from_checkpoint,
    tidy_console,
)
from recsys.training.sweep import log_hparams, task_overrides

__all__ = ["EVAL_KEYS", "build_trainer", "train"]
log = logging.getLogger("recsys")


def _resume_dir(ckpt_path: Path, default: Path) -> Path:
    """Resuming continues the run the checkpoint belongs to (``<run>/checkpoints/last.ckpt``)."""
    ckpt_path = ckpt_path.resolve()
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else default


def _check_resume_compatible(ckpt: dict[str, Any], config: dict[str, Any], path: str) -> None:
    stored = ckpt["hyper_parameters"].get("config") or {}
    for group in ("model", "data"):
        if stored.get(group) != config[group]:
            raise CheckpointError(
                f"ckpt_path: {path} was trained with a different {group} config; "
                f"resume with the same overrides as the interrupted run"
            )


def build_trainer(config: dict[str, Any], run_dir: Path) -> pl.Trainer:
    callbacks = []
    for cb_cfg in (config.get("callbacks") or {}).values():
        if cb_cfg is None:
            continue
        is_ckpt = str(cb_cfg.get("_target_", "")).endswith("ModelCheckpoint")
        extra = {"dirpath": str(run_dir / "checkpoints")} if is_ckpt else {}
        callbacks.append(hydra.utils.instantiate(cb_cfg, **extra))
    logger = build_loggers(config, run_dir)  # TensorBoard, MLflow, ...: recsys/training/loggers.py
    trainer_cfg = dict(config["trainer"])
    tidy_console()
    if not sys.stderr.isatty():  # a progress bar in a log file is noise; EpochSummary logs epochs
        trainer_cfg["enable_progress_bar"] = False
    return hydra.utils.instantiate(
        trainer_cfg, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir)
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best checkpoint on validation, test it; return the metrics dict."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    validate_config(config)
    run_dir = Path(config["paths"]["output_dir"])
    resume = config.get("ckpt_path")
    resume_epochs = 0
    if resume:
        ckpt = load_checkpoint(resume)
        _check_resume_compatible(ckpt, config, resume)
        resume_epochs = int(ckpt.get("epoch", -1)) + 1
        run_dir = _resume_dir(Path(resume), run_dir)
        log.info("resuming %s after epoch %d", run_dir, resume_epochs)

    pl.seed_everything(config["seed"], workers=True, verbose=False)
    dm = datamodule_from_config(config)
    dm.setup()
    module = module_for(config, dm)
    log.info("data %s: %s", config["data"].get("name"), dm.summary())
    trainer = build_trainer(config, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    manifest = start_manifest(
        run_dir,
        config,
        dm.fingerprint,
        str(trainer.strategy.root_device),
        split_fingerprint(dm.data),
    )

    t0 = time.perf_counter()
    if module.closed_form:
        module.fit_closed_form(dm.train_matrix())
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        trainer.strategy.connect(module)
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # as ModelCheckpoint
        shutil.copyfile(ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt")
        epochs = 0
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        epochs = trainer.current_epoch - resume_epochs
    fit_s = time.perf_counter() - t0
    if trainer.global_rank != 0:  # DDP: rank 0 alone evaluates the best checkpoint and writes
        return {}

    best = ckpt_dir / "best.ckpt"
    best_module = module_from_checkpoint(load_checkpoint(best, "best checkpoint"), trust=None)
    accelerator = config["trainer"].get("accelerator", "auto")
    val, _ = evaluate(best_module, dm, "val", accelerator)
    t1 = time.perf_counter()
    test, per_user = evaluate(best_module, dm, "test", accelerator)
    eval_s = time.perf_counter() - t1
    base = baseline(config, dm, accelerator)
    by_group = group_metrics(config, dm, per_user)
    labels = group_labels(config, dm, per_user)  # per-user group of each slicing (compare)

    if trainer.logger:
        trainer.logger.log_metrics(
            {f"test/{k}": v for k, v in test.items()}, step=trainer.global_step
        )
        log_hparams(trainer.logger, config, task_overrides(), {"val": val, "test": test})
        trainer.logger.save()
    np.savez_compressed(run_dir / "per_user_test.npz", **per_user, **labels)
    timing = {
        "fit_s": round(fit_s, 3),
        "epochs": int(epochs),
        "s_per_epoch": round(fit_s / epochs, 4) if epochs else None,
        "eval_s": round(eval_s, 4),
    }
    metrics = metrics_record(
        config,
        dm,
        val,
        test,
        timing,
        baseline=base,
        test_by_group=by_group,
        best_checkpoint=str(best),
        audit=True,
    )
    write_json(run_dir / "metrics.json", metrics)
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger else None
    opted_out = (dm.data.audit or {}).get("opt_out")  # counts and file hash, never ids
    end_manifest(
        run_dir, manifest, tensorboard=log_dir, **({"opt_out": opted_out} if opted_out else {})
    )
    rows = {"val": val, "test": test}
    if base:
        rows[f"{base['name']} (test)"] = base["test"]
    print(f"\n{format_table(rows)}\n\nrun directory: {run_dir}", flush=True)
    return metrics
