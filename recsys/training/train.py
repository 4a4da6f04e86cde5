"""``recsys-train``: train one model on one dataset, evaluate it, leave a complete run directory.

    recsys-train model=mf data=synthetic data.n_users=5000 trainer.max_epochs=20 seed=7

The run directory (``hydra.run.dir``) receives the composed config (``.hydra/``), checkpoints
(``checkpoints/best.ckpt``, ``last.ckpt``), TensorBoard events (``tensorboard/``), per-user test
metrics (``per_user_test.npz``) and ``metrics.json``, the run's machine-readable summary.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.trainer.states import TrainerStatus

from recsys.data.pipeline import fingerprint as data_fingerprint
from recsys.errors import CheckpointError, ConfigError, Interrupted
from recsys.files import atomic_write, remove_stale_temps, write_json
from recsys.training.callbacks import RUN_KEY, AtomicCheckpointIO, RunIdentity
from recsys.training.checks import check_writable, validate_config
from recsys.training.loggers import build_loggers
from recsys.training.manifest import (
    _process_alive,
    end_manifest,
    interruptible,
    interruption,
    recording_end,
    split_fingerprint,
    start_manifest,
)
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


# data keys that say where the files are, not what they hold: free to differ on a resume
_WHERE_KEYS = frozenset({"root", "cache_dir", "cache", "download", "num_workers"})
# optimizer keys that choose an implementation, not the updates
_IMPLEMENTATION_KEYS = frozenset({"fused", "foreach", "steps_per_call"})
_ABSENT = object()


def _differences(old: Any, new: Any, key: str, ignore: frozenset[str] = frozenset()) -> list[str]:
    """``key.sub old != new`` for every setting that differs between two config groups."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in ignore:
                out += _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{key}.{k}")
        return out
    if old == new:
        return []
    show = lambda v: "(absent)" if v is _ABSENT else repr(v)  # noqa: E731
    return [f"{key} {show(old)} != {show(new)}"]


def _refuse_resume(path: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"ckpt_path: {path} belongs to another experiment (checkpoint != this run): {what}; "
        "resume with the settings of the run that wrote it, or start a new run"
    )


def _check_resume_compatible(ckpt: dict[str, Any], config: dict[str, Any], path: str) -> None:
    """Refuse, before any data is loaded, a resume whose seed, model, data or optimizer settings
    differ from the checkpoint's: it would continue another experiment (another seed re-splits
    the data, so test items of one split may have been trained on in the other). The message
    names each difference."""
    hp = ckpt["hyper_parameters"]
    stored = hp.get("config") or {}
    diffs = []
    if hp.get("seed") != config["seed"]:
        diffs.append(f"seed {hp.get('seed')!r} != {config['seed']!r}")
    diffs += _differences(stored.get("model"), config["model"], "model")
    diffs += _differences(stored.get("data"), config["data"], "data", _WHERE_KEYS)
    if stored.get("optim") is not None:
        diffs += _differences(stored["optim"], config["optim"], "optim", _IMPLEMENTATION_KEYS)
    identity = ckpt.get(RUN_KEY) or {}
    old_fp = identity.get("data_fingerprint")
    if not diffs and old_fp is not None and old_fp != data_fingerprint(config["data"]):
        diffs.append(
            f"data fingerprint {old_fp} != {data_fingerprint(config['data'])} "
            "(a file the data config names, e.g. data.exclude_users, changed)"
        )
    if diffs:
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise _refuse_resume(path, "; ".join(diffs[:6]) + more)


def _check_resume_split(ckpt: dict[str, Any], split: str, path: str, run_dir: Path) -> None:
    """Refuse a resume whose prepared split differs from the one the checkpoint trained on (the
    raw files changed), right after the data is prepared and before any epoch. Checkpoints
    written before the split was stored in them are compared with their run's manifest."""
    stored = (ckpt.get(RUN_KEY) or {}).get("split_fingerprint")
    if stored is None:
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text())
            stored = (manifest.get("data") or {}).get("split_fingerprint")
        except (OSError, ValueError, AttributeError):
            stored = None
    if stored is not None and stored != split:
        raise _refuse_resume(
            path,
            f"split fingerprint {stored} != {split} (same data config, other prepared data: "
            "the raw data files changed since the run started)",
        )


def _check_not_running(run_dir: Path, path: str) -> None:
    """Refuse to resume into a run whose process is still alive on this host."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    pid = manifest.get("pid") if isinstance(manifest, dict) else None
    if (
        manifest.get("status") == "running"
        and manifest.get("host") == platform.node()
        and pid not in (None, os.getpid())
        and _process_alive(pid)
    ):
        raise CheckpointError(
            f"ckpt_path: {path}: its run {run_dir} is still running (process {pid}); "
            "resume once it has stopped"
        )


def _instantiate(cfg: dict[str, Any], key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, with a value the class refuses (Lightning's
    MisconfigurationException, a ValueError or an unexpected keyword) reported in one line
    naming ``key``."""
    from hydra.errors import InstantiationException
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, MisconfigurationException | ValueError | TypeError):
            raise ConfigError(f"{key}: {' '.join(str(cause).split())}") from None
        raise


def build_trainer(
    config: dict[str, Any], run_dir: Path, identity: dict[str, Any] | None = None
) -> pl.Trainer:
    """The run's Trainer: the configured callbacks (checkpoints under ``<run_dir>/checkpoints``),
    logger and trainer settings, checkpoints written atomically (:class:`AtomicCheckpointIO`)
    and, with ``identity``, stored in every checkpoint (:class:`RunIdentity`: the dict is read
    when a checkpoint is written, so it may be completed after the data is prepared). Needs no
    data: built before any is loaded, so a setting Lightning refuses is reported first."""
    callbacks: list[Any] = [RunIdentity(identity)] if identity is not None else []
    for name, cb_cfg in (config.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        is_ckpt = str(cb_cfg.get("_target_", "")).endswith("ModelCheckpoint")
        extra = {"dirpath": str(run_dir / "checkpoints")} if is_ckpt else {}
        callbacks.append(_instantiate(cb_cfg, f"callbacks.{name}", **extra))
    logger = build_loggers(config, run_dir)  # TensorBoard, MLflow, ...: recsys/training/loggers.py
    trainer_cfg = dict(config["trainer"])
    tidy_console()
    if not sys.stderr.isatty():  # a progress bar in a log file is noise; EpochSummary logs epochs
        trainer_cfg["enable_progress_bar"] = False
    extra: dict[str, Any] = {} if "plugins" in trainer_cfg else {"plugins": [AtomicCheckpointIO()]}
    return _instantiate(
        trainer_cfg,
        "trainer",
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_dir),
        **extra,
    )


# what only a finished run has: removed when a run (re)starts, fails or is interrupted
FINISHED_OUTPUTS = ("metrics.json", "per_user_test.npz")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best checkpoint on validation, test it; return the metrics dict.

    Settings the config alone decides are checked first (:func:`validate_config`, the run
    directory writable, a resume's compatibility with its checkpoint), before any data is
    loaded. ``manifest.json`` records the end: ``finished``, ``failed`` with the one-line reason,
    or ``interrupted`` (SIGINT/SIGTERM raise :class:`~recsys.errors.Interrupted`); an unfinished
    run leaves no ``metrics.json``."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    validate_config(config)
    run_dir = Path(config["paths"]["output_dir"])
    resume = config.get("ckpt_path")
    if resume:
        run_dir = _resume_dir(Path(resume), run_dir)
    check_writable(run_dir, "ckpt_path" if resume else "paths.output_dir")
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        _check_resume_compatible(ckpt, config, resume)
        _check_not_running(run_dir, resume)
    with interruptible():
        try:
            return _train(config, run_dir, resume, ckpt)
        except BaseException as e:
            signalled = interruption(e)
            if signalled is None:
                raise
            if not signalled.detail:
                signalled.detail = "before training started: nothing was recorded"
            if signalled is e:
                raise
            raise signalled from None


def _train(
    config: dict[str, Any], run_dir: Path, resume: str | None, ckpt: dict[str, Any] | None
) -> dict[str, Any]:
    ckpt_dir = run_dir / "checkpoints"
    for folder in (run_dir, ckpt_dir):  # what an atomic write killed mid-way left behind
        remove_stale_temps(folder)
    resume_epochs = 0
    if ckpt is not None:
        resume_epochs = int(ckpt.get("epoch", -1)) + 1
        log.info("resuming %s after epoch %d", run_dir, resume_epochs)

    identity: dict[str, Any] = {"seed": config["seed"]}  # completed once the data is prepared
    trainer = build_trainer(config, run_dir, identity)
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    dm = datamodule_from_config(config)
    dm.setup()
    split = split_fingerprint(dm.data)
    if ckpt is not None:
        _check_resume_split(ckpt, split, str(resume), run_dir)
    identity.update(data_fingerprint=dm.fingerprint, split_fingerprint=split)
    module = module_for(config, dm)
    _check_rating_task(module, dm)
    log.info("data %s: %s", config["data"].get("name"), dm.summary())
    for name in FINISHED_OUTPUTS:  # a resumed run's earlier results are not this run's
        (run_dir / name).unlink(missing_ok=True)
    manifest = start_manifest(
        run_dir, config, dm.fingerprint, str(trainer.strategy.root_device), split
    )
    try:
        with recording_end(run_dir, manifest, FINISHED_OUTPUTS):
            metrics = _fit_and_evaluate(config, run_dir, resume, resume_epochs, dm, module, trainer)
            if not metrics:  # DDP: another rank than 0
                return metrics
            log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger else None
            opted_out = (dm.data.audit or {}).get("opt_out")  # counts and file hash, never ids
            end_manifest(
                run_dir,
                manifest,
                tensorboard=log_dir,
                **({"opt_out": opted_out} if opted_out else {}),
            )
    except Interrupted as e:
        last = ckpt_dir / "last.ckpt"
        e.detail = f"run {run_dir} recorded as interrupted" + (
            f" (resume with ckpt_path={last})" if last.is_file() else ""
        )
        raise
    rows = {"val": metrics["val"], "test": metrics["test"]}
    base = metrics.get("baseline")
    if base:
        rows[f"{base['name']} (test)"] = base["test"]
    print(f"\n{format_table(rows)}\n\nrun directory: {run_dir}", flush=True)
    return metrics


def _check_rating_task(module: Any, dm: Any) -> None:
    """``eval.task=rating`` needs held-out ratings and a model that predicts them: said once the
    data is prepared, not at the first validation after a whole epoch."""
    if module.eval_cfg.get("task") != "rating":
        return
    if dm.data.val.rating is None:
        raise ConfigError("eval.task=rating needs a dataset with ratings (this one has none)")
    if not module.model.predicts_pairs:
        raise ConfigError(
            f"eval.task=rating needs a model with predict(user, item); "
            f"{type(module.model).__name__} only ranks"
        )


def _fit_and_evaluate(
    config: dict[str, Any],
    run_dir: Path,
    resume: str | None,
    resume_epochs: int,
    dm: Any,
    module: Any,
    trainer: pl.Trainer,
) -> dict[str, Any]:
    ckpt_dir = run_dir / "checkpoints"
    t0 = time.perf_counter()
    if module.closed_form:
        module.fit_closed_form(dm.train_matrix())
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        trainer.strategy.connect(module)
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # as ModelCheckpoint
        last = (ckpt_dir / "last.ckpt").read_bytes()
        atomic_write(ckpt_dir / "best.ckpt", lambda f: f.write(last))
        epochs = 0
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        # Lightning versions that swallow an interrupt return normally from fit: never go on to
        # evaluate and write the results of a run that did not finish
        if trainer.received_sigterm:
            raise Interrupted(signal.SIGTERM)
        if trainer.interrupted or trainer.state.status != TrainerStatus.FINISHED:
            raise Interrupted(signal.SIGINT)
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
    atomic_write(
        run_dir / "per_user_test.npz", lambda f: np.savez_compressed(f, **per_user, **labels)
    )
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
        features=best_module.model.features_used(),
    )
    write_json(run_dir / "metrics.json", metrics)
    return metrics
