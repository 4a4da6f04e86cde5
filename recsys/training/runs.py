"""What the commands share: config checks, reopening a run (:func:`open_run`), evaluation."""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from recsys.data.datamodule import RecDataModule
from recsys.errors import CheckpointError, ConfigError
from recsys.training.module import RecModule, validate_eval

log = logging.getLogger("recsys")
# evaluation settings RecModule receives (the rest of eval: selection, batching, baseline, groups)
EVAL_KEYS = ("topk", "metrics", "mask_seen", "task", "rating_clip", "popularity_bias", "sampled")


def validate_config(config: dict[str, Any]) -> None:
    """Refuse invalid values that can be checked before any data is loaded."""
    if not isinstance(config.get("seed"), int):
        raise ConfigError(f"seed must be an integer, got {config.get('seed')!r}")
    eval_bs = config["eval"].get("batch_size")  # null: the model's own chunk
    for key, value in (
        ("data.batch_size", config["data"].get("batch_size", 1)),
        ("eval.batch_size", 1 if eval_bs is None else eval_bs),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    max_epochs = config.get("trainer", {}).get("max_epochs", 1)
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < 1):
        raise ConfigError(f"trainer.max_epochs must be a positive integer, got {max_epochs!r}")
    validate_eval(config["eval"])
    k = (config.get("optim") or {}).get("steps_per_call", 1)
    trainer = config.get("trainer") or {}
    if k != 1:  # RecModule runs the optimizer steps itself: Lightning's automatic parts are off
        for key, off in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
            if trainer.get(key, off) not in (off, 0):
                raise ConfigError(
                    f"optim.steps_per_call={k!r} cannot be combined with trainer.{key}="
                    f"{trainer[key]!r} (set optim.steps_per_call=1)"
                )


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a recsys checkpoint with ``weights_only=True``; one clear error if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{key}: no such checkpoint file: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, unpickling refused
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{key}: {p} is not a readable checkpoint ({reason[:200]})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt or "model" not in hp:
        raise CheckpointError(f"{key}: {p} is not a recsys checkpoint (no model hyper-parameters)")
    return ckpt


def module_from_checkpoint(ckpt: dict[str, Any], key: str = "ckpt_path") -> RecModule:
    hp = dict(ckpt["hyper_parameters"])
    module = RecModule(**hp)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{key}: weights do not match the model ({str(e).splitlines()[0]})"
        ) from None
    return module


def datamodule_from_config(config: dict[str, Any]) -> RecDataModule:
    return RecDataModule(
        config["data"], seed=int(config["seed"]), eval_batch_size=config["eval"].get("batch_size")
    )


def eval_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``eval`` keys RecModule receives (the rest: selection, batching, baseline, groups)."""
    return {k: config["eval"][k] for k in EVAL_KEYS if k in config["eval"]}


def module_for(config: dict[str, Any], dm: RecDataModule) -> RecModule:
    """The run's :class:`RecModule` for the prepared ``dm`` (its sizes injected), with ``dm``
    configured to serve the batches the model declares: what ``recsys-train`` builds."""
    module = RecModule(
        model=config["model"],
        num_users=dm.n_users,
        num_items=dm.n_items,
        optim=config["optim"],
        evaluation=eval_settings(config),
        seed=config["seed"],
        config=config,
    )
    dm.configure_for(module.model, module.steps_per_call)
    return module


@dataclass(frozen=True)
class OpenedRun:
    """A trained run, reopened from its checkpoint (:func:`open_run`)."""

    config: dict[str, Any]  # the run's resolved config, with the overrides open_run was given
    module: RecModule  # the checkpoint's weights, on the CPU
    datamodule: RecDataModule  # the run's split, prepared and serving the model's batch shape
    checkpoint_path: Path


def open_run(
    path: str | Path,
    data_root: str | None = None,
    eval_batch_size: int | None = None,
    key: str = "ckpt_path",
) -> OpenedRun:
    """Reopen a run: its checkpoint (``path`` itself, or ``<path>/checkpoints/best.ckpt`` for a
    run directory), the module with its weights, and the data rebuilt from the stored config
    (same seed, same split). ``data_root`` replaces ``data.root`` (the data moved since
    training), ``eval_batch_size`` ``eval.batch_size``. ``key`` names the setting that gave
    ``path`` in the one-line :class:`CheckpointError` of a file that is not a recsys
    checkpoint, a config without its data section, or data whose user or item count is no
    longer the checkpoint's."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "best.ckpt"
        if not p.is_file():
            raise CheckpointError(
                f"{key}={path}: no checkpoints/best.ckpt (is it a recsys-train run directory?)"
            )
    ckpt = load_checkpoint(p, key)
    module = module_from_checkpoint(ckpt, key)
    config = copy.deepcopy(ckpt["hyper_parameters"].get("config"))
    if not isinstance(config, dict) or not config.get("data"):
        raise CheckpointError(f"{key}: {p} does not record the data config of its run")
    if data_root:
        config["data"]["root"] = data_root
    config.setdefault("eval", {})
    if eval_batch_size is not None:
        config["eval"]["batch_size"] = eval_batch_size
    dm = datamodule_from_config(config)
    dm.configure_for(module.model, module.steps_per_call)
    model = module.model
    if (dm.n_users, dm.n_items) != (model.num_users, model.num_items):
        raise CheckpointError(
            f"{key}: the data now has {dm.n_users} users / {dm.n_items} items, the checkpoint "
            f"was trained on {model.num_users} / {model.num_items} (the dataset changed since "
            "training?)"
        )
    return OpenedRun(config, module, dm, p)


def tidy_console() -> None:
    """Keep a run's console ours: drop, by their exact text, three notices Lightning prints that
    say nothing about the run; every other warning and message stays. Idempotent.

    - the "💡 Tip: ..." advertisements (litlogger, litmodels), logged at INFO by Lightning's
      rank-zero logger when a Trainer is built;
    - torch's FutureWarning that ``LeafSpec`` is deprecated, raised inside Lightning's own
      ``utilities/_pytree.py`` (Lightning's code to change, not ours);
    - "The number of training batches (N) is smaller than the logging interval": recsys logs
      once per epoch (RecModule writes its metrics to the loggers itself), never per step, so
      ``trainer.log_every_n_steps`` has nothing to log.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"The number of training batches \(\d+\) is smaller than the logging interval",
        category=PossibleUserWarning,
    )
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _drop_tips not in logger.filters:
            logger.addFilter(_drop_tips)


def _drop_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


@contextmanager
def quiet_lightning():
    """Silence Lightning's device banners for the short evaluation trainers."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def evaluate(
    module: RecModule, dm: RecDataModule, stage: str, accelerator: str = "auto"
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics and per-user values of ``module`` on ``stage`` ("val" or "test")."""
    tidy_console()
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        run = trainer.validate if stage == "val" else trainer.test
        run(module, datamodule=dm, verbose=False)
    return module.results[stage], module.per_user[stage]
