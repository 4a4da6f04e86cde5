"""Run outputs: ``metrics.json`` (assembled here for ``recsys-train`` and ``recsys-eval``
alike) and the results table printed at the end of a run."""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.data.datamodule import RecDataModule
from recsys.training.module import RecModule
from recsys.training.runs import eval_settings, evaluate
from recsys.training.slices import by_group, labels_for


def metrics_record(
    config: dict[str, Any],
    dm: RecDataModule,
    val: dict[str, float],
    test: dict[str, float],
    timing: dict[str, Any],
    *,
    baseline: dict[str, Any] | None = None,
    test_by_group: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    best_checkpoint: str | None = None,
    audit: bool = False,
    features: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` of a run (``recsys-train``: ``baseline``, the data audit and
    ``best_checkpoint``) or of a re-evaluation (``recsys-eval``: ``checkpoint``). Entries left
    None are left out; ``test_by_group`` only when some slicing gave groups."""
    out: dict[str, Any] = {}
    if checkpoint is not None:
        out["checkpoint"] = checkpoint
    out.update(model=config["model"]["_target_"], val=val, test=test)
    if features is not None:  # the attribute fields the model used (empty lists: ids only)
        out["features"] = features
    if baseline is not None:
        out["baseline"] = baseline
    if test_by_group:
        out["test_by_group"] = test_by_group
    out["data"] = {
        "name": config["data"].get("name"),
        "fingerprint": dm.fingerprint,
        **dm.summary(),
        **({"audit": dm.data.audit} if audit else {}),
    }
    out["timing"] = timing
    if best_checkpoint is not None:
        out["best_checkpoint"] = best_checkpoint
    return out


def _slicings(config: dict[str, Any], groups: dict[str, Any] | None) -> dict[str, Any]:
    """The run's ``eval.groups`` with ``groups``' non-null values over it; none for rating."""
    if config["eval"].get("task", "ranking") != "ranking":
        return {}
    slicing = dict(config["eval"].get("groups") or {})
    slicing.update({k: v for k, v in (groups or {}).items() if v is not None})
    return slicing


def _train_counts(dm: RecDataModule) -> np.ndarray:
    train = dm.data.train
    return np.bincount(train.user, minlength=train.n_users)


def group_metrics(
    config: dict[str, Any],
    dm: RecDataModule,
    per_user: dict[str, Any],
    groups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-group test metrics (``eval.groups``: activity buckets, a segments file, an
    attribute; ``groups`` overrides the run's slicings key by key, null keeps the run's)."""
    slicing = _slicings(config, groups)
    if not slicing:
        return {}
    return by_group(per_user, slicing, dm.data.train.user_ids, _train_counts(dm), config["data"])


def group_labels(
    config: dict[str, Any], dm: RecDataModule, per_user: dict[str, Any]
) -> dict[str, np.ndarray]:
    """``{"group:<slicing>": (U,) str}``: each evaluated user's group (empty: none), stored in
    ``per_user_test.npz`` for ``recsys-compare``'s per-group tests."""
    slicing = _slicings(config, None)
    if not slicing:
        return {}
    users = np.asarray(per_user["user"], dtype=np.int64)
    found = labels_for(slicing, users, dm.data.train.user_ids, _train_counts(dm), config["data"])
    return {
        f"group:{name}": np.array(["" if v is None else str(v) for v in labels])
        for name, (labels, _) in found.items()
    }


def baseline(config: dict[str, Any], dm: RecDataModule, accelerator: str) -> dict[str, Any]:
    """The reference row: the configured baseline model (``eval.baseline``, a closed-form
    model), fitted and tested on the same split and sliced like the run."""
    base_cfg = config["eval"].get("baseline")
    if not base_cfg:
        return {}
    module = RecModule(
        model=base_cfg, num_users=dm.n_users, num_items=dm.n_items, evaluation=eval_settings(config)
    )
    module.fit_closed_form(dm.train_matrix())
    test, per_user = evaluate(module, dm, "test", accelerator)
    name = base_cfg["_target_"].rpartition(".")[2].lower()
    sliced = group_metrics(config, dm, per_user)
    return {"name": name, "test": test, **({"test_by_group": sliced} if sliced else {})}


def _metric_order(name: str) -> tuple[int, str]:
    metric, _, k = name.partition("@")
    return (int(k) if k.isdigit() else 0, metric)


def _cell(name: str, value: float) -> str:
    """Counts (``n_users``, ``n_...``) print as integers, metrics with four decimals."""
    return str(int(value)) if name.startswith("n_") else f"{value:.4f}"


def _slice_rows(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each row's item-slice metrics (``cold/ndcg@10``) as rows of their own (``test/cold``)."""
    out: dict[str, dict[str, float]] = {}
    for label, r in rows.items():
        out[label] = {k: v for k, v in r.items() if "/" not in k}
        for k, v in r.items():
            prefix, sep, name = k.rpartition("/")
            if sep:
                out.setdefault(f"{label}/{prefix}", {})[name] = v
    return out


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per label, one column per metric (sorted by K, then name);
    item-slice metrics (``cold/ndcg@10``) on rows of their own (``test/cold``)."""
    rows = _slice_rows(rows)
    cols = sorted({c for r in rows.values() for c in r}, key=_metric_order)
    label_w = max([len("split")] + [len(r) for r in rows])
    widths = [max(len(c), 6) for c in cols]
    lines = [
        "  ".join(
            ["split".ljust(label_w)] + [c.rjust(w) for c, w in zip(cols, widths, strict=True)]
        ),
    ]
    lines.append("-" * len(lines[0]))
    for label, r in rows.items():
        cells = [
            (_cell(c, r[c]) if c in r else "").rjust(w) for c, w in zip(cols, widths, strict=True)
        ]
        lines.append("  ".join([label.ljust(label_w)] + cells))
    return "\n".join(lines)
