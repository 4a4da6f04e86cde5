"""Small Lightning callbacks recsys adds to every run."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

log = logging.getLogger("recsys")


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
