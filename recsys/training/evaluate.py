"""``recsys-eval``: re-evaluate a checkpoint on the test split of the run that produced it.

    recsys-eval ckpt_path=<run_dir>/checkpoints/best.ckpt

The data and split are rebuilt from the config stored in the checkpoint (same seed, same split),
so the printed metrics equal the ones the training run reported for that checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recsys.errors import CheckpointError
from recsys.files import write_json
from recsys.training.runs import (
    datamodule_from_config,
    evaluate,
    load_checkpoint,
    module_from_checkpoint,
)


def evaluate_checkpoint(
    ckpt_path: str,
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    accelerator: str = "auto",
    batch_size: int | None = None,
    groups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validation and test metrics of a checkpoint; written to ``out_dir/metrics.json``.

    ``groups`` overrides the run's ``eval.groups`` key by key (null values keep the run's); the
    per-group test metrics go to ``test_by_group``."""
    ckpt = load_checkpoint(ckpt_path)
    module = module_from_checkpoint(ckpt)
    config = ckpt["hyper_parameters"].get("config")
    if not isinstance(config, dict) or "data" not in config:
        raise CheckpointError(f"ckpt_path: {ckpt_path} does not record the data config of its run")
    if data_root is not None:
        config["data"]["root"] = data_root
    if batch_size is not None:
        config["eval"]["batch_size"] = batch_size
    dm = datamodule_from_config(config)
    dm.configure_for(module.model)
    if (dm.n_users, dm.n_items) != (module.model.num_users, module.model.num_items):
        raise CheckpointError(
            f"ckpt_path: the data now has {dm.n_users} users / {dm.n_items} items, the checkpoint "
            f"was trained on {module.model.num_users} / {module.model.num_items}"
        )
    val, _ = evaluate(module, dm, "val", accelerator)
    t0 = time.perf_counter()
    test, per_user = evaluate(module, dm, "test", accelerator)
    slicing = dict(config["eval"].get("groups") or {})
    slicing.update({k: v for k, v in (groups or {}).items() if v is not None})
    by_group: dict[str, Any] = {}
    if any(slicing.values()) and config["eval"].get("task", "ranking") == "ranking":
        import numpy as np

        from recsys.training.slices import by_group as slice_metrics

        train = dm.data.train
        counts = np.bincount(train.user, minlength=train.n_users)
        by_group = slice_metrics(per_user, slicing, train.user_ids, counts, config["data"])
    metrics = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "model": config["model"]["_target_"],
        "val": val,
        "test": test,
        **({"test_by_group": by_group} if by_group else {}),
        "data": {"name": config["data"].get("name"), "fingerprint": dm.fingerprint, **dm.summary()},
        "timing": {"eval_s": round(time.perf_counter() - t0, 4)},
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
