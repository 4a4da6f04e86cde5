"""Optuna pruning for a sweep's training runs: a Lightning callback the Optuna sweeper
(``hydra_plugins/recsys_optuna_sweeper``) adds to each trial's trainer.

In its own module so that :mod:`recsys.training.sweep`, which the ``recsys-train`` command line
reads before Hydra hands it a config, does not import Lightning: ``--help``, ``--cfg`` and an
override error then answer in about a second instead of nine.
"""

from __future__ import annotations

import logging
from typing import Any

from pytorch_lightning import Callback

from recsys.training.sweep import open_storage

log = logging.getLogger("recsys")


class OptunaPruning(Callback):
    """Report ``monitor`` to Optuna trial ``trial`` of ``study_name`` after every validation and
    stop training when ``pruner`` says the trial is unpromising.

    The step is the epoch index (0-based, as Optuna's pruners expect). A pruned trial is not
    failed: training stops as early stopping would, the run still evaluates its best checkpoint
    and writes ``metrics.json``, and the trial records ``pruned_after_epoch``; the sweeper then
    marks it PRUNED. If the storage cannot be reached, pruning is switched off with a warning and
    the run goes on.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial: int,
        monitor: str,
        pruner: Any = None,
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial = int(trial)
        self.monitor = monitor
        self.pruner = pruner
        self.pruned_after_epoch: int | None = None
        self._trial: Any = None
        self._disabled = False

    def _optuna_trial(self) -> Any:
        if self._trial is None:
            import optuna

            study = optuna.load_study(
                study_name=self.study_name, storage=open_storage(self.storage), pruner=self.pruner
            )
            # Optuna has no public "trial by number" for an existing running trial
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self.trial
            )
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def _decide(self, trainer: Any) -> bool:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or self._disabled:
            return False
        epoch = int(trainer.current_epoch)
        try:
            trial = self._optuna_trial()
            trial.report(float(value), step=epoch)
            if not trial.should_prune():
                return False
            trial.set_user_attr("pruned_after_epoch", epoch + 1)
        except Exception as e:  # noqa: BLE001 - the study being unreachable must not lose the run
            log.warning("pruning switched off: trial %d of %s: %s", self.trial, self.study_name, e)
            self._disabled = True
            return False
        self.pruned_after_epoch = epoch + 1
        for logger in trainer.loggers:  # the trackers show which runs were cut short
            logger.log_metrics({"optuna/pruned_after_epoch": epoch + 1}, step=trainer.global_step)
        log.info(
            "trial %d pruned after epoch %d (%s = %.4f)", self.trial, epoch + 1, self.monitor, value
        )
        return True

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        prune = self._decide(trainer) if trainer.is_global_zero else False
        if trainer.world_size > 1:  # every rank stops together
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            trainer.should_stop = True
