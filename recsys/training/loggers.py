"""The run's experiment trackers, built in one place from ``config["logger"]``.

``config["logger"]`` names the trackers (``logger=tensorboard``, ``logger=mlflow``,
``logger=[tensorboard,mlflow]``: ``{tensorboard: {...}, mlflow: {...}}``); a single logger
config with a ``_target_`` (the shape of configs written before combinations existed) is read
too. :func:`build_loggers` gives Lightning one logger, or :class:`Loggers` holding several, so
code that holds ``trainer.logger`` (the test metrics, the HPARAMS entry) reaches all of them.

- **TensorBoard**: events in ``<run>/tensorboard/``; in a sweep, one root
  ``<sweep>/tensorboard/<job>-<model>,<key=value,...>`` for all runs.
- **MLflow** (:class:`MLflowLogger`, ``pip install -e '.[track]'``): the resolved config as
  params, every validation and the final test metrics (``@`` is not allowed in MLflow names:
  ``val/ndcg@10`` is logged as ``val/ndcg_at_10``), and, when the Hydra job ends
  (:class:`MLflowRuns`), ``manifest.json``, ``metrics.json`` and the config as artifacts, plus the
  exported artifact with ``log_artifact=true``. The default store is a SQLite file,
  ``mlruns/mlflow.db`` (MLflow 3 keeps its file store in maintenance mode and refuses it unless
  ``MLFLOW_ALLOW_FILE_STORE=true``); ``MLFLOW_TRACKING_URI`` or ``logger.mlflow.tracking_uri``
  name any other store or server. A sweep is one parent run (created when the sweep starts,
  ``<sweep>/mlflow.json``) whose children are its runs; an Optuna sweep's experiment is named
  after its study.
- Anything else with a ``save_dir`` argument (W&B's ``WandbLogger``, ``CSVLogger``) writes under
  the run directory.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from recsys.errors import ConfigError
from recsys.training.sweep import in_multirun, run_name, sweep_dir, task_overrides

log = logging.getLogger("recsys")

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "recsys"
SWEEP_FILE = "mlflow.json"  # <sweep>/mlflow.json: the sweep's parent run
_MAX_PARAM = 6000  # MLflow's limit on a param value (characters)
_RUN_FILES = {  # logged when the job ends: file in the run directory -> artifact folder
    "manifest.json": "run",
    "metrics.json": "run",
    ".hydra/config.yaml": "run/hydra",
    ".hydra/overrides.yaml": "run/hydra",
}


def logger_specs(spec: Any) -> dict[str, dict[str, Any]]:
    """``{name: logger config}`` from ``config["logger"]`` (None, one config or named ones)."""
    if not spec:
        return {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"logger: expected a logger config or named ones, got {spec!r}")
    if "_target_" in spec:
        return {str(spec["_target_"]).rpartition(".")[2].lower(): dict(spec)}
    out = {}
    for name, one in spec.items():
        if one is None:
            continue
        if not isinstance(one, Mapping) or "_target_" not in one:
            raise ConfigError(f"logger.{name}: a logger config needs a _target_")
        out[str(name)] = dict(one)
    return out


def _job_num() -> int | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return int(HydraConfig.get().job.num) if in_multirun() else None
    except Exception:  # noqa: BLE001 - outside Hydra
        return None


def build_loggers(config: dict[str, Any], run_dir: Path) -> Logger | bool:
    """The Lightning logger(s) of a run writing to ``run_dir`` (False: none configured)."""
    specs = logger_specs(config.get("logger"))
    if not specs:
        return False
    sweep = sweep_dir()
    name = run_name(config, task_overrides(), _job_num()) if sweep is not None else None
    loggers = [_build(key, spec, config, run_dir, sweep, name) for key, spec in specs.items()]
    return loggers[0] if len(loggers) == 1 else Loggers(loggers)


def _build(
    key: str,
    spec: dict[str, Any],
    config: dict[str, Any],
    run_dir: Path,
    sweep: Path | None,
    name: str | None,
) -> Logger:
    from hydra.errors import InstantiationException

    try:
        cls = hydra.utils.get_class(spec["_target_"])
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"logger.{key}._target_: cannot import {spec['_target_']} ({e})"
        ) from None
    args: dict[str, Any]
    if issubclass(cls, TensorBoardLogger):
        # one TensorBoard root per sweep; each run in a folder named from its model and overrides
        args = {"save_dir": str(sweep), "version": name} if sweep else {"save_dir": str(run_dir)}
    elif issubclass(cls, MLflowLogger):
        args = {"run_dir": str(run_dir), "run_name": name or _run_label(run_dir)}
        args.update(_sweep_parent(spec, sweep))
        args["tags"] = {**_run_tags(config), **(spec.get("tags") or {})}
    else:
        params = inspect.signature(cls).parameters
        args = (
            {"save_dir": str(run_dir)} if "save_dir" in params and not spec.get("save_dir") else {}
        )
        if sweep is not None and "group" in params and not spec.get("group"):
            args.update(group=sweep.name, name=name)  # W&B: a sweep is a group of runs
    try:
        logger = hydra.utils.instantiate(spec, **args)
    except InstantiationException as e:
        cause = e.__cause__ or e.__context__
        raise ConfigError(f"logger.{key}: {' '.join(str(cause or e).split())}") from None
    if not isinstance(logger, TensorBoardLogger):  # TensorBoard's HPARAMS entry comes at the end
        logger.log_hyperparams(config_params(config))  # the resolved config, as params
    return logger


def _run_label(run_dir: Path) -> str:
    """outputs/<date>/<time> -> <date>/<time>: the run's name in MLflow outside a sweep."""
    return "/".join(Path(run_dir).parts[-2:])


def _run_tags(config: dict[str, Any]) -> dict[str, str]:
    return {
        "recsys.model": str((config.get("model") or {}).get("_target_", "")),
        "recsys.data": str((config.get("data") or {}).get("name", "")),
        "recsys.seed": str(config.get("seed")),
    }


def config_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The resolved config flattened to ``a.b.c`` keys (lists kept whole), hydra excluded."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if not prefix and k == "hydra":
            continue
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(config_params(v, f"{key}."))
        else:
            out[key] = v
    return out


def mlflow_name(name: str) -> str:
    """A metric or param name MLflow accepts: ``val/ndcg@10`` -> ``val/ndcg_at_10``."""
    return name.replace("@", "_at_")


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text[:_MAX_PARAM]


class Loggers(Logger):
    """Several loggers behind one, for code that holds ``trainer.logger``."""

    def __init__(self, loggers: Iterable[Logger]) -> None:
        super().__init__()
        self.loggers = list(loggers)

    @property
    def name(self) -> str | None:
        return self.loggers[0].name

    @property
    def version(self) -> int | str | None:
        return self.loggers[0].version

    @property
    def save_dir(self) -> str | None:
        return self.loggers[0].save_dir

    @property
    def log_dir(self) -> str | None:
        """TensorBoard's folder when there is one (what the manifest records)."""
        for lg in self.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.log_dir
        return getattr(self.loggers[0], "log_dir", None)

    @property
    def experiment(self) -> list[Any]:
        return [lg.experiment for lg in self.loggers]

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        from recsys.training.sweep import send_hparams

        metrics = kwargs.pop("metrics", args[0] if args else None)
        for lg in self.loggers:
            send_hparams(lg, params, metrics)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        for lg in self.loggers:
            lg.log_graph(model, input_array)

    def save(self) -> None:
        for lg in self.loggers:
            lg.save()

    def finalize(self, status: str) -> None:
        for lg in self.loggers:
            lg.finalize(status)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        for lg in self.loggers:
            lg.after_save_checkpoint(checkpoint_callback)


# -- MLflow -------------------------------------------------------------------------------------

_OPEN: list[MLflowLogger] = []  # this process's MLflow runs whose files are logged at job end


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the local SQLite store; a relative local
    SQLite path becomes absolute (its folder created) so every process of a sweep agrees."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri.removeprefix("sqlite:///")).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    elif uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _artifact_location(uri: str, location: str | None) -> str | None:
    """New experiments in a local SQLite store keep their files beside it (<db dir>/artifacts);
    elsewhere the store or server decides."""
    if location or not uri.startswith("sqlite:///"):
        return location
    return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")


def _sweep_parent(spec: dict[str, Any], sweep: Path | None) -> dict[str, Any]:
    """A sweep's run nests under the sweep's parent run when both use the same store."""
    info = _read_sweep_file(sweep) if sweep is not None else None
    if not info or info.get("tracking_uri") != resolve_tracking_uri(spec.get("tracking_uri")):
        return {}
    return {"experiment_name": info["experiment_name"], "parent_run_id": info["parent_run_id"]}


def _read_sweep_file(sweep: Path | None) -> dict[str, Any] | None:
    path = sweep / SWEEP_FILE if sweep is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


class MLflowLogger(MLFlowLogger):
    """Lightning's MLflow logger with recsys' conventions: the resolved config as params
    (``model.embedding_size``, later values of a logged key ignored, as MLflow refuses changes),
    ``@`` in metric names spelt ``_at_``, a local SQLite store by default, and the run's files
    logged when its Hydra job ends (:meth:`log_run_files`)."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        artifact_location: str | None = None,
        log_artifact: bool = False,
        log_model: bool | str = False,
        run_dir: str | None = None,
        parent_run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        uri = resolve_tracking_uri(tracking_uri)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if run_dir:
            tags["recsys.run_dir"] = str(Path(run_dir).resolve())
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        super().__init__(
            experiment_name=experiment_name or DEFAULT_EXPERIMENT,
            run_name=run_name,
            tracking_uri=uri,
            tags=tags,
            artifact_location=_artifact_location(uri, artifact_location),
            log_model=log_model,  # type: ignore[arg-type]
            **kwargs,
        )
        self.run_dir = Path(run_dir) if run_dir else None
        self.log_artifact = bool(log_artifact)
        self._logged_params: set[str] = set()
        _OPEN.append(self)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Mapping[str, float] | None = None) -> None:
        from mlflow.entities import Param

        flat = config_params(params if isinstance(params, Mapping) else vars(params))
        new = []
        for k, v in flat.items():
            key = mlflow_name(str(k))[:250]
            if key not in self._logged_params:
                self._logged_params.add(key)
                new.append(Param(key=key, value=_param_value(v)))
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            self.experiment.log_batch(run_id=self.run_id, params=new[i : i + 100])
        if metrics:
            self.log_metrics(metrics)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {
            mlflow_name(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) or hasattr(v, "item")
        }
        super().log_metrics(clean, step)

    def log_run_files(self, status: str = "FINISHED") -> None:
        """Log the run's manifest, metrics.json and config (and, with ``log_artifact``, the
        exported artifact) to its MLflow run and mark the run ``status``."""
        if not self._initialized or self.run_id is None:
            return  # never started (another DDP rank, a run that failed before training)
        client, run_id = self.experiment, self.run_id
        if self.run_dir is not None:
            for rel, folder in _RUN_FILES.items():
                path = self.run_dir / rel
                if path.is_file():
                    client.log_artifact(run_id, str(path), artifact_path=folder)
            if self.log_artifact and status == "FINISHED":
                self._log_exported(client, run_id)
        client.set_terminated(run_id, status)

    def _log_exported(self, client: Any, run_id: str) -> None:
        from recsys.serving.export import export

        assert self.run_dir is not None
        out = self.run_dir / "artifact"
        try:
            if not (out / "manifest.json").is_file():
                export(self.run_dir, out)
            client.log_artifacts(run_id, str(out), artifact_path="artifact")
        except Exception as e:  # noqa: BLE001 - the run itself succeeded; say why and go on
            log.warning("MLflow: the artifact of %s was not logged: %s", self.run_dir, e)


def finish_runs(status: str = "FINISHED") -> None:
    """Log the files of this process's open MLflow runs and close them (a job's end)."""
    while _OPEN:
        lg = _OPEN.pop()
        try:
            lg.log_run_files(status)
        except Exception as e:  # noqa: BLE001 - tracking must not fail a finished run
            log.warning("MLflow: could not finish run %s: %s", lg._run_id, e)


def _mlflow_spec(config: Any) -> dict[str, Any] | None:
    from omegaconf import OmegaConf

    logger_cfg = config.get("logger") if config is not None else None
    if logger_cfg is None:
        return None
    resolved = OmegaConf.to_container(logger_cfg, resolve=True)
    for spec in logger_specs(resolved).values():
        target = str(spec.get("_target_", ""))
        if target.endswith(("MLflowLogger", "MLFlowLogger")):
            return spec
    return None


def _sweep_name(config: Any, sweep: Path) -> tuple[str | None, str]:
    """(the study's name for an Optuna sweep, else None; the parent run's name)."""
    sweeper = config.hydra.get("sweeper") or {}
    if "study_name" in sweeper:
        study = sweeper.get("study_name") or sweep.name
        return str(study), str(study)
    return None, "/".join(sweep.parts[-2:])


def start_sweep_run(config: Any) -> dict[str, Any] | None:
    """Create (or reopen, for a resumed sweep) the sweep's parent MLflow run."""
    spec = _mlflow_spec(config)
    if spec is None:
        return None
    from mlflow.tracking import MlflowClient

    sweep = Path(str(config.hydra.sweep.dir)).resolve()
    sweep.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(spec.get("tracking_uri"))
    client = MlflowClient(uri)
    info = _read_sweep_file(sweep)
    if info and info.get("tracking_uri") == uri:
        try:
            client.update_run(info["parent_run_id"], status="RUNNING")
        except Exception:  # noqa: BLE001 - deleted meanwhile: start a new parent
            pass
        else:  # a resumed sweep: the runs the kill interrupted will not finish
            for run in client.search_runs(
                [info["experiment_id"]],
                f"tags.mlflow.parentRunId = '{info['parent_run_id']}' "
                "and attributes.status = 'RUNNING'",
            ):
                client.set_terminated(run.info.run_id, "KILLED")
            info = {k: v for k, v in info.items() if k != "closed"}
            (sweep / SWEEP_FILE).write_text(json.dumps(info, indent=2) + "\n")
            return info
    study, run_label = _sweep_name(config, sweep)
    name = spec.get("experiment_name") or study or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(
            name, artifact_location=_artifact_location(uri, spec.get("artifact_location"))
        )
    )
    run = client.create_run(
        experiment_id,
        run_name=run_label,
        tags={"recsys.sweep_dir": str(sweep), "recsys.kind": "sweep"},
    )
    info = {
        "tracking_uri": uri,
        "experiment_name": name,
        "experiment_id": experiment_id,
        "parent_run_id": run.info.run_id,
    }
    (sweep / SWEEP_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def end_sweep_run(config: Any) -> None:
    """Log the sweep's summary files to its parent run and close it (idempotent)."""
    sweep = Path(str(config.hydra.sweep.dir)).resolve()
    info = _read_sweep_file(sweep)
    if not info or info.get("closed"):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    run_id = info["parent_run_id"]
    for name in ("optimization_results.yaml", "trials.csv", "multirun.yaml"):
        if (sweep / name).is_file():
            client.log_artifact(run_id, str(sweep / name), artifact_path="sweep")
    if (sweep / "best").is_dir():
        client.log_artifacts(run_id, str(sweep / "best"), artifact_path="sweep/best")
    results = sweep / "optimization_results.yaml"
    if results.is_file():
        import yaml

        res = yaml.safe_load(results.read_text()) or {}
        best = res.get("best_value")
        if isinstance(best, int | float) and math.isfinite(best):
            client.log_metric(run_id, mlflow_name(f"best/{res.get('metric', 'value')}"), best)
    failed = len(list((sweep / "failures").glob("*.json"))) if (sweep / "failures").is_dir() else 0
    client.set_tag(run_id, "recsys.failed_runs", str(failed))
    client.set_terminated(run_id, "FINISHED")
    (sweep / SWEEP_FILE).write_text(json.dumps({**info, "closed": True}, indent=2) + "\n")


try:  # the callback base class exists whenever Hydra is installed (a core dependency)
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class MLflowRuns(_Callback):  # type: ignore[misc,valid-type]
    """Hydra callback of ``logger=mlflow``: a sweep's parent run (created before its first run,
    closed with the summary after its last) and, at every job's end, the run's files."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        start_sweep_run(config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        end_sweep_run(config)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        value = getattr(job_return, "_return_value", None)
        failed = job_return.status != JobStatus.COMPLETED or (
            isinstance(value, float) and math.isnan(value)  # a sweep's failed run (record_failures)
        )
        finish_runs("FAILED" if failed else "FINISHED")
