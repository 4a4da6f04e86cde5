"""Checks on a run's config alone, made before any data is loaded or any epoch is trained.

Every check raises a one-line :class:`~recsys.errors.ConfigError` naming the key: what the config
alone decides is refused here, not after minutes of data preparation or a first epoch.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recsys.errors import ConfigError
from recsys.metrics.ranking import METRICS
from recsys.metrics.rating import RATING_METRICS
from recsys.training.module import OPTIM_DEFAULTS, validate_eval
from recsys.trust import resolve

SEED_BOUND = 2**32  # numpy's seeds (and Lightning's seed_everything): 0 <= seed < 2**32
# optimizer arguments that choose an implementation for a device, not the update: not tried on
# the CPU stand-in parameter below
_DEVICE_ARGS = ("fused", "foreach", "capturable", "differentiable")


def validate_config(config: dict[str, Any]) -> None:
    """Refuse invalid values that can be checked before any data is loaded."""
    seed = config.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed < SEED_BOUND:
        raise ConfigError(f"seed must be in [0, 2**32), got {seed}")
    eval_bs = config["eval"].get("batch_size")  # null: the model's own chunk
    for key, value in (
        ("data.batch_size", config["data"].get("batch_size", 1)),
        ("eval.batch_size", 1 if eval_bs is None else eval_bs),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    max_epochs = config.get("trainer", {}).get("max_epochs", 1)
    if max_epochs is not None and (
        isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1
    ):
        raise ConfigError(f"trainer.max_epochs must be a positive integer, got {max_epochs!r}")
    for key, low in (("check_val_every_n_epoch", 1), ("log_every_n_steps", 1)):
        value = (config.get("trainer") or {}).get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < low
        ):
            raise ConfigError(f"trainer.{key} must be null or an integer >= {low}, got {value!r}")
    validate_eval(config["eval"])
    validate_monitors(config)
    validate_optim(config.get("optim"))
    k = (config.get("optim") or {}).get("steps_per_call", 1)
    trainer = config.get("trainer") or {}
    if k != 1:  # RecModule runs the optimizer steps itself: Lightning's automatic parts are off
        for key, off in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
            if trainer.get(key, off) not in (off, 0):
                raise ConfigError(
                    f"optim.steps_per_call={k!r} cannot be combined with trainer.{key}="
                    f"{trainer[key]!r} (set optim.steps_per_call=1)"
                )


def produced_metrics(evaluation: dict[str, Any]) -> list[str]:
    """The metric names one evaluation pass with these settings reports (without the
    ``val/``/``test/`` prefix), in the order of ``eval.metrics`` × ``eval.topk``."""
    metrics = list(evaluation.get("metrics") or [])
    if evaluation.get("task", "ranking") == "rating":
        return [m for m in metrics if m in RATING_METRICS]
    topk = sorted(int(k) for k in evaluation.get("topk") or [])
    names = [f"{m}@{k}" for m in metrics if m in METRICS for k in topk]
    if evaluation.get("popularity_bias", True):
        names += [f"{m}@{k}" for m in ("coverage", "gini", "arp") for k in topk]
    if evaluation.get("sampled"):
        names += [f"sampled_{m}@{k}" for m in metrics if m in METRICS for k in topk]
    return names


def _check_monitor(key: str, monitor: Any, produced: list[str], stages: tuple[str, ...]) -> None:
    if not isinstance(monitor, str):
        raise ConfigError(f"{key} must be a metric name such as val/{produced[0]}, got {monitor!r}")
    if monitor in ("epoch", "step"):  # Lightning's own counters (e.g. keep the last epoch)
        return
    stage, _, name = monitor.partition("/")
    if stage == "train" and name:  # the model's loss terms: train/loss and whatever it returns
        return
    if stage in stages and name in produced:
        return
    examples = ", ".join(f"{stages[0]}/{n}" for n in produced[:4])
    raise ConfigError(
        f"{key}={monitor!r} is not a metric this run reports (eval.metrics x eval.topk give "
        f"{examples}{', ...' if len(produced) > 4 else ''}; or train/loss, epoch)"
    )


def validate_monitors(config: dict[str, Any]) -> None:
    """``eval.monitor``, every callback's ``monitor`` and ``optimized_metric`` must name a metric
    the evaluation settings produce: a misspelt one would otherwise be found by checkpointing or
    early stopping only after a whole epoch of training."""
    evaluation = config["eval"]
    produced = produced_metrics(evaluation)
    if (config.get("data") or {}).get("split") == "cold_items" and evaluation.get(
        "task", "ranking"
    ) == "ranking":  # the item slices of the cold-items protocol (recsys.training.module)
        topk = sorted(int(k) for k in evaluation.get("topk") or [])
        ranked = [f"{m}@{k}" for m in evaluation.get("metrics") or [] if m in METRICS for k in topk]
        produced += [f"{s}/{n}" for s in ("cold", "warm") for n in ranked]
    mode = evaluation.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"eval.mode must be max or min, got {mode!r}")
    if "monitor" in evaluation:
        _check_monitor("eval.monitor", evaluation["monitor"], produced, ("val",))
    for name, cb in (config.get("callbacks") or {}).items():
        monitor = cb.get("monitor") if isinstance(cb, dict) else None
        if monitor is not None:
            _check_monitor(f"callbacks.{name}.monitor", monitor, produced, ("val",))
        cb_mode = cb.get("mode") if isinstance(cb, dict) else None
        if cb_mode is not None and cb_mode not in ("max", "min"):
            raise ConfigError(f"callbacks.{name}.mode must be max or min, got {cb_mode!r}")
    optimized = config.get("optimized_metric")
    if isinstance(optimized, str) and optimized.startswith(("val/", "test/")):
        _check_monitor("optimized_metric", optimized, produced, ("val", "test"))


def validate_optim(optim: dict[str, Any] | None) -> None:
    """The optimizer config: ``lr`` a positive number, ``steps_per_call`` an integer >= 1, and,
    for a ``torch.optim`` optimizer, only arguments its constructor takes, with values it
    accepts (it is built once on a stand-in parameter, so torch's own checks, e.g. of
    ``weight_decay`` or ``betas``, speak before any data is loaded)."""
    cfg = {**OPTIM_DEFAULTS, **(optim or {})}
    target = cfg.pop("_target_")
    steps = cfg.pop("steps_per_call", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"optim.steps_per_call must be an integer >= 1, got {steps!r}")
    lr = cfg.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"optim.lr must be a positive number, got {lr!r}")
    cls = resolve(target, "optim", "optim._target_", None)
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        return  # another optimizer family: its own constructor checks its arguments
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [n for n in params if n != "params"]
        for key in cfg:
            if key not in params or key == "params":
                raise ConfigError(
                    f"optim.{key} is not an argument of {target} (arguments: {', '.join(known)})"
                )
    tried = {k: v for k, v in cfg.items() if k not in _DEVICE_ARGS}
    try:
        cls([torch.nn.Parameter(torch.zeros(2, 2))], **tried)
    except (ValueError, TypeError) as e:  # torch's own argument checks
        raise ConfigError(f"optim ({target}): {' '.join(str(e).split())}") from None
    except Exception:  # noqa: BLE001 - it cannot be tried on a stand-in: the real one will tell
        pass


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it; refuse with one
    line naming ``key`` (the setting that chose it) when that fails, before any data is loaded."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        raise ConfigError(f"{key}: cannot write the run directory {folder} ({why})") from None


class WritableRunDir(Callback):
    """Hydra callback of ``recsys-train``: refuses an unwritable ``hydra.run.dir`` (or, in a
    sweep, ``hydra.sweep.dir``) with one line and exit status 2 before Hydra itself tries to
    create it (which would end in a traceback)."""

    def _check(self, config: DictConfig, key: str) -> None:
        folder = OmegaConf.select(config, key)
        if folder is None:
            return
        try:
            check_writable(Path(str(folder)), key)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
