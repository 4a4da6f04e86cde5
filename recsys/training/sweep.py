"""Sweep plumbing for ``recsys-train -m``: run names, TensorBoard hyper-parameters, failures,
and the trial side of Optuna searches.

- In a multirun every run logs TensorBoard events under one root, ``<sweep_dir>/tensorboard/``,
  in a folder named from the model and the run's overrides (:func:`run_name`), so
  ``tensorboard --logdir <sweep_dir>`` compares them side by side.
- :func:`hparams` gives the values shown in TensorBoard's HPARAMS tab: every overridden key, the
  model's hyper-parameters and the optimizer's.
- :func:`record_failures` keeps a sweep going when one run fails: the failure (overrides, error,
  traceback) is written to ``<sweep_dir>/failures/<job>.json`` and the run returns NaN (Optuna
  marks such a trial failed). :class:`FailureReport`, a Hydra callback, lists the failures once
  the sweep ends and exits with status 1 if there were any.
- Optuna searches (``hparams_search=...``, the sweeper in ``hydra_plugins/recsys_optuna_sweeper``)
  keep their study in a storage that both the sweeper and every trial open
  (:func:`open_storage`); :class:`recsys.training.pruning.OptunaPruning`, a Lightning
  callback the sweeper adds to each trial, reports the monitored validation metric after every
  epoch and stops a trial its pruner finds unpromising. The trial may run in another process or
  on another machine (joblib, SLURM), so it reaches the study through the storage, never through
  an in-memory object.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("recsys")

EXIT_SWEEP_FAILED = 1
_SKIP_OVERRIDES = ("hydra.", "paths.", "trainer.enable_progress_bar")


def _hydra_config() -> Any | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no Hydra context (a run from Python)
        return None


def in_multirun() -> bool:
    hc = _hydra_config()
    return hc is not None and str(hc.mode) == "RunMode.MULTIRUN"


def sweep_dir() -> Path | None:
    hc = _hydra_config()
    return Path(hc.sweep.dir).resolve() if hc is not None and in_multirun() else None


def task_overrides() -> list[str]:
    """This run's command-line overrides (including the swept values), or [] outside Hydra."""
    hc = _hydra_config()
    return list(hc.overrides.task) if hc is not None else []


def model_name(config: dict[str, Any]) -> str:
    target = str(config.get("model", {}).get("_target_", "model"))
    return target.rpartition(".")[2].lower()


def swept_keys(sweep: Path | None = None) -> set[str] | None:
    """Keys the sweep varies (from ``<sweep_dir>/multirun.yaml``), or None when unknown."""
    hc = _hydra_config()
    params = getattr(getattr(hc, "sweeper", None), "params", None) if hc is not None else None
    if params:  # Optuna: the search space (it writes no multirun.yaml)
        return set(params)
    sweep = sweep or sweep_dir()
    path = sweep / "multirun.yaml" if sweep is not None else None
    if path is None or not path.is_file():
        return None
    import yaml

    hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    keys = set((hydra_cfg.get("sweeper") or {}).get("params") or {})
    for o in (hydra_cfg.get("overrides") or {}).get("task") or []:
        key, _, value = str(o).lstrip("+~").partition("=")
        if "," in value or value.startswith(("range(", "choice(", "interval(", "glob(", "tag(")):
            keys.add(key)
    return keys


def run_name(
    config: dict[str, Any],
    overrides: list[str],
    job_num: int | None = None,
    keys: set[str] | None = None,
) -> str:
    """A folder-safe name: ``<job>-<model>-<key=value,...>``, over the swept keys when known."""
    keys = swept_keys() if keys is None else keys
    parts = []
    for o in overrides:
        o = o.lstrip("+~")
        key = o.partition("=")[0]
        if (
            key == "model"
            or o.startswith(_SKIP_OVERRIDES)
            or (keys is not None and key not in keys)
        ):
            continue
        value = o.partition("=")[2]
        try:  # sampled floats: 3 significant digits are enough to tell runs apart
            if "." in value or "e" in value:
                value = f"{float(value):.3g}"
        except ValueError:
            pass
        parts.append(f"{key.removeprefix('model.')}={value}")
    name = ",".join([model_name(config), *parts])
    name = re.sub(r"[^A-Za-z0-9_.,=@+-]+", "_", name)[:180]
    return f"{job_num:03d}-{name}" if job_num is not None else name


def _scalar(value: Any) -> Any:
    if value is None:
        return "null"
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def hparams(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Hyper-parameters for TensorBoard's HPARAMS tab (scalars only)."""
    out: dict[str, Any] = {"model": model_name(config), "seed": config.get("seed")}
    for key, value in config.get("model", {}).items():
        if key != "_target_":
            out[f"model.{key}"] = value
    for key, value in (config.get("optim") or {}).items():
        out[f"optim.{key}"] = value.rpartition(".")[2] if key == "_target_" else value
    for o in overrides:
        key, sep, _ = o.lstrip("+~").partition("=")
        if not sep or key.startswith(_SKIP_OVERRIDES) or "/" in key:
            continue
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            continue  # a config group choice (model=mf): already named above
        out[key] = node
    return {k: _scalar(v) for k, v in out.items()}


def log_hparams(
    logger: Any, config: dict[str, Any], overrides: list[str], results: dict[str, dict[str, float]]
) -> None:
    """Write the HPARAMS entry of this run: its hyper-parameters with the final metrics.

    The metrics go under ``final/<stage>/<metric>`` so the per-epoch curves are left untouched.
    """
    if not logger or not hasattr(logger, "log_hyperparams"):
        return
    metrics = {
        f"final/{stage}/{k}": float(v) for stage, vals in results.items() for k, v in vals.items()
    }
    send_hparams(logger, hparams(config, overrides), metrics)


def send_hparams(logger: Any, params: dict[str, Any], metrics: dict[str, float] | None) -> None:
    """``logger.log_hyperparams`` with ``metrics`` where it takes them (TensorBoard's HPARAMS,
    recsys' MLflow logger); elsewhere (W&B, CSV) the metrics are logged as metrics."""
    import inspect

    if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
        logger.log_hyperparams(params, metrics=metrics)
        return
    logger.log_hyperparams(params)
    if metrics:
        logger.log_metrics(metrics)


def record_failures(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for the Hydra task function: in a multirun, a failing run is recorded and the
    sweep goes on; in a single run the exception propagates unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not in_multirun():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure of one run must not stop the sweep
            hc = _hydra_config()
            overrides = task_overrides()
            num = int(hc.job.num) if hc is not None else 0
            record = {
                "job": num,
                "overrides": overrides,
                "output_dir": str(hc.runtime.output_dir) if hc is not None else None,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
            folder = (sweep_dir() or Path(".")) / "failures"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{num:03d}.json").write_text(json.dumps(record, indent=2) + "\n")
            log.error("run %d failed (%s): %s", num, " ".join(overrides), record["error"])
            print(
                f"error: run {num} ({' '.join(overrides)}) failed: {record['error']}",
                file=sys.stderr,
                flush=True,
            )
            return math.nan

    return wrapper


def failures(sweep: str | Path) -> list[dict[str, Any]]:
    folder = Path(sweep) / "failures"
    return (
        [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        if folder.is_dir()
        else []
    )


def storage_url(storage: str | None, sweep: Path) -> str:
    """The study's storage: ``storage`` as given, or a SQLite file in the sweep folder.

    A relative SQLite path is made absolute, so trials started elsewhere (another working
    directory, a SLURM node sharing the filesystem) open the same file.
    """
    if not storage:
        return f"sqlite:///{(sweep / 'optuna.db').resolve()}"
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        return f"sqlite:///{Path(storage.removeprefix('sqlite:///')).resolve()}"
    if storage.startswith("journal:"):
        return f"journal:{Path(storage.removeprefix('journal:')).resolve()}"
    return storage


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``: an RDB URL (``sqlite:///...``, ``postgresql://...``) or
    ``journal:<file>`` (Optuna's journal file, for filesystems where SQLite locking is unsafe)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # parallel trials write intermediate values to one file: wait for its lock, don't fail
        kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}}
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, **kwargs)


try:  # the callback base class exists whenever Hydra is installed (a core dependency)
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class FailureReport(_Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: after a multirun, list the failed runs and exit 1 if there were any."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        failed = failures(sweep)
        if not failed:
            return
        if (sweep / "mlflow.json").is_file():
            # Hydra ends callbacks in reverse order and this one exits: close the sweep's
            # MLflow parent run first (recsys.training.loggers.MLflowRuns would not get to it)
            try:
                from recsys.training.loggers import end_sweep_run

                end_sweep_run(config)
            except Exception as e:  # noqa: BLE001 - the report below matters more
                log.warning("MLflow: the sweep's parent run was not closed: %s", e)
        lines = [f"{len(failed)} run(s) of the sweep failed (details: {sweep / 'failures'}):"]
        for f in failed:
            lines.append(f"  job {f['job']}: {' '.join(f['overrides'])}\n    {f['error']}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        sys.exit(EXIT_SWEEP_FAILED)
