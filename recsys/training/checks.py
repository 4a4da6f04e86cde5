"""Checks on a run's config alone, made before any data is loaded or any epoch is trained.

Every check raises a one-line :class:`~recsys.errors.ConfigError` naming the key: what the config
alone decides is refused here, not after minutes of data preparation or a first epoch.
"""

from __future__ import annotations

from typing import Any

from recsys.errors import ConfigError
from recsys.training.module import validate_eval


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
