"""``recsys-eval``: re-evaluate a checkpoint on the test split of the run that produced it.

    recsys-eval ckpt_path=<run_dir>/checkpoints/best.ckpt

The data and split are rebuilt from the config stored in the checkpoint (same seed, same split),
so the printed metrics equal the ones the training run reported for that checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recsys.files import write_json
from recsys.training.results import group_metrics, metrics_record
from recsys.training.runs import evaluate, open_run


def evaluate_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    accelerator: str = "auto",
    batch_size: int | None = None,
    groups: dict[str, Any] | None = None,
    trust: list[str] | None = None,
    allow_unfinished: bool = False,
) -> dict[str, Any]:
    """Validation and test metrics of a checkpoint (or of a run directory's best checkpoint);
    written to ``out_dir/metrics.json``.

    ``groups`` overrides the run's ``eval.groups`` key by key (null values keep the run's); the
    per-group test metrics go to ``test_by_group``. ``trust`` and ``allow_unfinished``: as
    :func:`~recsys.training.runs.open_run`."""
    run = open_run(
        ckpt_path,
        data_root=data_root,
        eval_batch_size=batch_size,
        trust=trust,
        allow_unfinished=allow_unfinished,
    )
    module, dm = run.module, run.datamodule
    val, _ = evaluate(module, dm, "val", accelerator)
    t0 = time.perf_counter()
    test, per_user = evaluate(module, dm, "test", accelerator)
    by_group = group_metrics(run.config, dm, per_user, groups)
    metrics = metrics_record(
        run.config,
        dm,
        val,
        test,
        {"eval_s": round(time.perf_counter() - t0, 4)},
        test_by_group=by_group,
        checkpoint=str(run.checkpoint_path.resolve()),
        features=module.model.features_used(),
    )
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
