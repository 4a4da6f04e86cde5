"""What the entry points share: config checks, checkpoint loading, trainers, evaluation."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from recsys.data.datamodule import RecDataModule
from recsys.errors import CheckpointError, ConfigError
from recsys.training.module import RecModule, validate_eval

log = logging.getLogger("recsys")


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
