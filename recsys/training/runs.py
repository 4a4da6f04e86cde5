"""What the commands share: loading checkpoints, reopening a run (:func:`open_run`), evaluation."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from recsys.data.datamodule import RecDataModule
from recsys.data.features import SplitFeatures
from recsys.errors import CheckpointError
from recsys.training.manifest import require_finished
from recsys.training.module import RecModule
from recsys.trust import Trust, check

log = logging.getLogger("recsys")
# evaluation settings RecModule receives (the rest of eval: selection, batching, baseline, groups)
EVAL_KEYS = ("topk", "metrics", "mask_seen", "task", "rating_clip", "popularity_bias", "sampled")


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
    _check_hyper_parameters(hp, f"{key}: {p}")
    return ckpt


# a checkpoint from elsewhere: recsys' own classes and $RECSYS_TRUSTED_PACKAGES
CHECKPOINT = Trust("checkpoint")
# RecModule's stored arguments and the type each must have in a checkpoint
_HP_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "num_users": (int,),
    "num_items": (int,),
    "optim": (dict, type(None)),
    "evaluation": (dict, type(None)),
    "seed": (int,),
    "config": (dict, type(None)),
    "features": (dict, type(None)),
}


def _check_hyper_parameters(hp: dict[str, Any], where: str) -> None:
    """Refuse, by name, hyper-parameters RecModule does not take or of the wrong type."""
    unknown = sorted(str(k) for k in hp if k not in _HP_TYPES)
    if unknown:
        raise CheckpointError(f"{where}: unknown hyper-parameter(s) {', '.join(unknown)}")
    for name, types in _HP_TYPES.items():
        value = hp.get(name)
        if name in ("model", "num_users", "num_items") and value is None:
            raise CheckpointError(f"{where}: hyper-parameter {name} is missing")
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise CheckpointError(
                f"{where}: hyper-parameter {name} must be {types[0].__name__}, "
                f"got {type(value).__name__}"
            )
    if hp["num_users"] < 1 or hp["num_items"] < 1:
        raise CheckpointError(f"{where}: num_users and num_items must be positive")


def module_from_checkpoint(
    ckpt: dict[str, Any], key: str = "ckpt_path", trust: Trust | None = CHECKPOINT
) -> RecModule:
    """The :class:`RecModule` of a checkpoint from :func:`load_checkpoint`, weights loaded.

    ``trust``: what its model and optimizer configs may name (:mod:`recsys.trust`): by default
    recsys' own classes and the packages in ``$RECSYS_TRUSTED_PACKAGES``; None (anything
    importable) only for a checkpoint this process wrote from the user's own config."""
    hp = dict(ckpt["hyper_parameters"])
    # refused on opening, not only where the optimizer would be built (training)
    check(
        (hp.get("optim") or {}).get("_target_", "torch.optim.Adam"),
        "optim",
        "optim._target_",
        trust,
    )
    module = RecModule(**hp, trust=trust)
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
    features = SplitFeatures.of(dm.data) if config["model"].get("features") else None
    module = RecModule(
        model=config["model"],
        num_users=dm.n_users,
        num_items=dm.n_items,
        optim=config["optim"],
        evaluation=eval_settings(config),
        seed=config["seed"],
        config=config,
        features=None if features is None else features.schema(),
    )
    if features is not None:  # the split's codes into the model's buffers, before any fit
        module.model.set_features(features)
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
    allow_unfinished: bool = False,
    trust: Iterable[str] | str | None = None,
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
    if p.resolve().parent.name == "checkpoints":
        require_finished(p.resolve().parent.parent, key, allow_unfinished)
    ckpt = load_checkpoint(p, key)
    allowed = Trust.for_file(p, trust)
    config = copy.deepcopy(ckpt["hyper_parameters"].get("config"))
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise CheckpointError(f"{key}: {p} does not record the data config of its run")
    check(config["data"].get("source"), "source", "data.source", allowed)
    module = module_from_checkpoint(ckpt, key, allowed)
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
