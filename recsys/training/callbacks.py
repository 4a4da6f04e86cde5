"""Small Lightning callbacks and plugins recsys adds to every run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from recsys.files import atomic_write

log = logging.getLogger("recsys")
# the checkpoint entry RunIdentity writes: what a resume must match
RUN_KEY = "recsys_run"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: a temporary file beside the target, fsynced,
    then renamed over it (:func:`recsys.files.atomic_write`). Lightning's own writer opens the
    target itself, so a process killed mid-save could leave a truncated ``last.ckpt`` for the
    next resume to read; here the previous checkpoint stays until the new one is complete."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


class RunIdentity(pl.Callback):
    """Stores in every checkpoint what makes its run one experiment: the seed, the data
    fingerprint (the data config values) and the split fingerprint (the prepared data's
    content), under ``checkpoint["recsys_run"]``. A resume compares them with its own before
    any epoch is trained (:func:`recsys.training.train.train`)."""

    def __init__(self, identity: dict[str, Any]):
        self.identity = identity  # read at each save: completed once the data is prepared

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_KEY] = dict(self.identity)


class EpochSummary(pl.Callback):
    """One log line per epoch: losses, validation metrics and wall time (readable without a TTY)."""

    def __init__(self, metrics: tuple[str, ...] = ("train/loss", "val/ndcg@10", "val/recall@10")):
        self.metrics = metrics
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k}={float(m[k]):.4f}" for k in self.metrics if k in m]
        log.info(
            "epoch %d  %s  (%.2fs)",
            trainer.current_epoch,
            "  ".join(parts),
            time.perf_counter() - self._t0,
        )
