"""recsys' Optuna sweeper for Hydra: ``recsys-train -m hparams_search=<name>``.

Optuna's ask-and-tell API drives the study; Hydra's launcher runs the trials (in this process,
with joblib, or on SLURM through submitit), ``n_jobs`` at a time:

1. the study is created in, or reloaded from, ``storage`` (default: ``<sweep dir>/optuna.db``),
   so a sweep killed half-way continues when the same command is run again with
   ``hydra.sweep.dir=<that folder>``: finished trials are kept, trials the kill interrupted are
   marked failed (``interrupted``) and their parameters run again, and the study stops once it
   holds ``n_trials`` finished trials;
2. each trial's overrides are the fixed command-line ones, the sampled values and, with a
   pruner, ``callbacks.optuna_pruning`` (:class:`recsys.training.pruning.OptunaPruning`), which
   reports the validation metric of every epoch to the trial through the storage and stops the
   run when the pruner says so;
3. the run's return value (``optimized_metric``) completes the trial; a pruned run makes it
   PRUNED, a failed run (recorded in ``failures/``, value NaN) FAILED, and the sweep goes on;
4. after every batch the sweep folder gets ``optimization_results.yaml``, ``trials.csv`` and the
   best trial as an experiment file, ``best/experiment/<study>_best.yaml``.

Nothing heavy is imported at module level: Hydra imports every plugin at start-up.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .space import Dimension, grammar, search_space

log = logging.getLogger(__name__)

DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}
PRUNING_KEY = "callbacks.optuna_pruning"
# groups that say how a run is tracked or where it is written, not what it trains
_NOT_EXPERIMENT = ("hparams_search", "experiment", "paths", "logger", "callbacks")


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Any = None,
        enqueue: Any = None,
    ) -> None:
        if str(direction) not in DIRECTIONS:
            raise ValueError(
                f"hydra.sweeper.direction must be maximize or minimize, got {direction}"
            )
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError("hydra.sweeper.n_trials and n_jobs must be at least 1")
        self.sampler_cfg = _container(sampler)
        self.pruner_cfg = _container(pruner)
        if self.pruner_cfg is not None and "_target_" not in self.pruner_cfg:
            # settings left behind by a search file after ~hydra/sweeper/pruner: no pruning
            log.warning("hydra.sweeper.pruner has no _target_ (%s): no pruning", self.pruner_cfg)
            self.pruner_cfg = None
        self.direction = DIRECTIONS[str(direction)]
        self.study_name = study_name
        self.storage = storage
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.params = _container(params) or {}
        self.enqueue = _container(enqueue) or []

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.metric = str(config.get("optimized_metric") or "value")

    # -- the study -------------------------------------------------------------------------

    def _sampler(self, n_existing: int) -> Any:
        from hydra.utils import instantiate

        cfg = dict(self.sampler_cfg or {"_target_": "optuna.samplers.TPESampler"})
        if n_existing and cfg.get("seed") is not None:
            # a resumed study must not replay the first session's draws
            cfg["seed"] = int(cfg["seed"]) + n_existing
        return instantiate(cfg)

    def _study(self, url: str, name: str) -> tuple[Any, int]:
        import optuna

        from recsys.training.sweep import open_storage

        storage = open_storage(url)
        try:
            study_id = storage.get_study_id_from_name(name)
            n_existing = len(storage.get_all_trials(study_id, deepcopy=False))
        except KeyError:
            n_existing = 0
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=self._sampler(n_existing),
            direction=self.direction,
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ValueError(
                f"study {name} in {url} was created to {study.direction.name.lower()}, "
                f"not {self.direction}"
            )
        return study, n_existing

    @staticmethod
    def _finished(study: Any) -> list[Any]:
        from optuna.trial import TrialState

        return [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
        ]

    @staticmethod
    def _recover(study: Any) -> list[int]:
        """Trials a killed sweep left running: mark them failed and run their parameters again.
        (One sweeper drives a study at a time; a second one on the same study would see the
        first one's running trials here.)"""
        import optuna
        from optuna.trial import TrialState

        numbers = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.trial.Trial(study, t._trial_id)
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            # a kill between ask() and the suggestions leaves an enqueued trial without its
            # params: they are still in the fixed params it was enqueued with
            params = {**(t.system_attrs.get("fixed_params") or {}), **t.params}
            study.enqueue_trial(params, user_attrs={"rerun_of": t.number})
            numbers.append(t.number)
        return numbers

    # -- one batch -------------------------------------------------------------------------

    def _pruning_override(self, number: int, url: str, name: str) -> list[str]:
        if not self.pruner_cfg:
            return []
        node = {
            "_target_": "recsys.training.pruning.OptunaPruning",
            "storage": url,
            "study_name": name,
            "trial": number,
            "monitor": "${eval.monitor}",
            "pruner": self.pruner_cfg,
        }
        return [f"++{PRUNING_KEY}={grammar(node)}"]

    def _launch(self, trials: list[Any], batch: list[list[str]]) -> list[Any]:
        numbers = [t.number for t in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            # job number = trial number: <sweep dir>/<trial number>/ is the trial's run
            return list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
        return [
            r
            for t, o in zip(trials, batch, strict=True)
            for r in self.launcher.launch([o], t.number)
        ]

    def _tell(self, study: Any, trial: Any, ret: Any) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        run_dir = None
        try:
            run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
            trial.set_user_attr("run_dir", str(run_dir))
        except Exception:  # noqa: BLE001 - a launcher that returns no Hydra config
            pass
        value = ret._return_value if ret.status == JobStatus.COMPLETED else None
        attrs = study._storage.get_trial(trial._trial_id).user_attrs  # what the run recorded
        if not isinstance(value, int | float) or not math.isfinite(value):
            trial.set_user_attr("error", self._error(trial.number, ret, value))
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("error"))
        elif attrs.get("pruned_after_epoch") is not None:
            trial.set_user_attr("run_value", float(value))  # its best checkpoint's value
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, float(value))

    def _error(self, number: int, ret: Any, value: Any) -> str:
        import json

        path = self.sweep_dir / "failures" / f"{number:03d}.json"
        if path.is_file():
            return str(json.loads(path.read_text()).get("error"))
        if isinstance(ret._return_value, BaseException):
            return f"{type(ret._return_value).__name__}: {ret._return_value}"
        return f"the run returned {value!r} for {self.metric}"

    # -- the sweep ---------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[Any]:
        import optuna
        from optuna.trial import TrialState

        from recsys.training.sweep import storage_url

        space, fixed = search_space(self.params, arguments, self.hydra_context.config_loader)
        if not space:
            raise ValueError("Optuna sweep: nothing to search (hydra.sweeper.params is empty)")
        distributions = {d.name: d.distribution for d in space}
        for params in self.enqueue:
            for key, value in params.items():
                if key not in distributions:
                    raise ValueError(f"hydra.sweeper.enqueue: {key} is not a searched key")
                try:
                    inside = distributions[key]._contains(
                        distributions[key].to_internal_repr(value)
                    )
                except (ValueError, TypeError):
                    inside = False
                if not inside:
                    raise ValueError(
                        f"hydra.sweeper.enqueue: {key}={value} is outside {distributions[key]}"
                    )

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        url = storage_url(self.storage, self.sweep_dir)
        name = self.study_name or self.sweep_dir.name
        study, n_existing = self._study(url, name)
        interrupted = self._recover(study)
        if n_existing == 0:
            for params in self.enqueue:
                study.enqueue_trial(params)
        done = len(self._finished(study))
        if n_existing:
            print(
                f"resuming study {name} ({url}): {done} of {self.n_trials} trials finished"
                + (
                    f", {len(interrupted)} interrupted ({interrupted}) to run again"
                    if interrupted
                    else ""
                )
                + f", {max(self.n_trials - done, 0)} to run",
                flush=True,
            )
        else:
            print(f"study {name}: {self.n_trials} trials, storage {url}", flush=True)

        returns: list[Any] = []
        while (todo := self.n_trials - len(self._finished(study))) > 0:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, todo))]
            batch = [
                [
                    *fixed,
                    *(d.override(t.params[d.name]) for d in space),
                    *self._pruning_override(t.number, url, name),
                ]
                for t in trials
            ]
            for t, overrides in zip(trials, batch, strict=True):
                t.set_user_attr("overrides", [o for o in overrides if PRUNING_KEY not in o])
            try:
                self.validate_batch_is_legal(batch)
                rets = self._launch(trials, batch)
            except BaseException:
                for t in trials:  # a bad search space or a stopped sweep: no trial stays running
                    if study._storage.get_trial(t._trial_id).state == TrialState.RUNNING:
                        study.tell(t, state=TrialState.FAIL)
                raise
            for t, ret in zip(trials, rets, strict=True):
                self._tell(study, t, ret)
            returns.append(rets)
            self._write_results(study, url, space)
        self._write_results(study, url, space, final=True)
        return returns

    # -- results -----------------------------------------------------------------------------

    def _write_results(self, study: Any, url: str, space: list[Dimension], final: bool = False):
        from optuna.trial import TrialState

        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        keys = [d.name for d in space]
        with open(self.sweep_dir / "trials.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "number",
                    "state",
                    "value",
                    "epochs",
                    "pruned_after_epoch",
                    *keys,
                    "run_dir",
                    "error",
                ]
            )
            for t in trials:
                w.writerow(
                    [
                        t.number,
                        t.state.name,
                        t.value,
                        len(t.intermediate_values),
                        t.user_attrs.get("pruned_after_epoch"),
                        *(t.params.get(k) for k in keys),
                        t.user_attrs.get("run_dir"),
                        t.user_attrs.get("error"),
                    ]
                )
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = study.best_trial if complete else None
        best_file = self._write_best(study, best) if best is not None else None
        results: dict[str, Any] = {
            "name": study.study_name,
            "storage": url,
            "direction": self.direction,
            "metric": self.metric,
            "n_trials": self.n_trials,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
            "best_trial": {
                "number": best.number,
                "run_dir": best.user_attrs.get("run_dir"),
                "experiment_file": str(best_file),
            }
            if best
            else None,
            "states": {
                s.name: sum(t.state == s for t in trials) for s in TrialState if s.is_finished()
            },
            "pruned": [
                {
                    "trial": t.number,
                    "after_epoch": t.user_attrs.get("pruned_after_epoch"),
                    "value": t.value,
                }
                for t in trials
                if t.state == TrialState.PRUNED
            ],
            "failed": [
                {
                    "trial": t.number,
                    "error": t.user_attrs.get("error"),
                    "interrupted": bool(t.user_attrs.get("interrupted")),
                }
                for t in trials
                if t.state == TrialState.FAIL
            ],
        }
        (self.sweep_dir / "optimization_results.yaml").write_text(
            OmegaConf.to_yaml(OmegaConf.create(results))
        )
        if final:
            print(self._summary(trials, keys, best, best_file, url), flush=True)

    def _summary(
        self, trials: list[Any], keys: list[str], best: Any, best_file: Path | None, url: str
    ) -> str:
        lines = [f"\ntrial  state     {self.metric:>12}  epochs  parameters"]
        for t in trials:
            value = "" if t.value is None else f"{t.value:.4f}"
            epochs = str(len(t.intermediate_values) or "")
            if t.user_attrs.get("pruned_after_epoch") is not None:
                epochs = f"{t.user_attrs['pruned_after_epoch']} (pruned)"
            params = " ".join(
                f"{k}={t.params[k]:.4g}"
                if isinstance(t.params.get(k), float)
                else f"{k}={t.params.get(k)}"
                for k in keys
            )
            note = " (interrupted, run again)" if t.user_attrs.get("interrupted") else ""
            lines.append(
                f"{t.number:>5}  {t.state.name:<8}  {value:>12}  {epochs:<6}  {params}{note}"
            )
        if best is not None and best_file is not None:
            root = best_file.parent.parent
            lines.append(
                f"best: trial {best.number}, {self.metric} = {best.value:.4f} ({best.user_attrs.get('run_dir')})"
            )
            lines.append(f"run it again: recsys-train -cd {_rel(root)} experiment={best_file.stem}")
        lines.append(f"watch the study: optuna-dashboard {url.removeprefix('journal:')}")
        return "\n".join(lines)

    def _write_best(self, study: Any, best: Any) -> Path:
        """The best trial as an experiment file: its config-group choices and key overrides."""
        import yaml
        from hydra.core.override_parser.overrides_parser import OverridesParser

        run_dir = Path(best.user_attrs.get("run_dir") or self.sweep_dir / str(best.number))
        choices: dict[str, Any] = {}
        hydra_file = run_dir / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get(
                "runtime", {}
            ).get("choices", {}) or {}
        else:
            choices = _container(self.config.hydra.runtime.choices) or {}
        groups = {
            g: c
            for g, c in choices.items()
            if c is not None and not g.startswith("hydra") and g not in _NOT_EXPERIMENT
        }
        values: dict[str, Any] = {}
        skipped = []
        for ov in OverridesParser.create().parse_overrides(
            list(best.user_attrs.get("overrides", []))
        ):
            key = ov.key_or_group
            if key in choices or ov.is_hydra_override() or key.split(".")[0] in _NOT_EXPERIMENT:
                continue
            if ov.is_delete():
                skipped.append(ov.input_line)
                continue
            node = values
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = ov.value()
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{study.study_name}_best")
        path = self.sweep_dir / "best" / "experiment" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        experiment = choices.get("experiment")
        header = [
            "# @package _global_",
            f"# Best trial of Optuna study {study.study_name}: trial {best.number}, "
            f"{self.metric} = {best.value:.6g} (search: {_rel(self.sweep_dir)}/optimization_results.yaml).",
            f"#   recsys-train -cd {_rel(path.parent.parent)} experiment={name}   (or copy it to configs/experiment/)",
        ]
        header += [f"# not expressible here, add to the command line: {s}" for s in skipped]
        order = ["data", "model", "optim", "eval", "trainer"]
        ranked = sorted(groups, key=lambda g: order.index(g) if g in order else len(order))
        defaults: list[Any] = [f"/experiment/{experiment}"] if experiment else []
        defaults += [{f"override /{g}": groups[g]} for g in ranked]
        body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **values}))
        path.write_text("\n".join(header) + "\n" + body)
        return path


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
