"""Segment-sliced evaluation: the test metrics of each user group next to the overall ones.

``eval.groups`` names the slicings (any subset, each reported separately):

- ``activity``: thresholds on the training history length, ``[5, 20]`` gives ``cold`` (< 5),
  ``light`` (5..19) and ``heavy`` (>= 20); other numbers of thresholds give range labels;
- ``segments``: a ``segments.csv`` with columns ``user`` (external id) and ``segment``
  (e.g. written by ``recsys-segment``);
- ``attribute``: a user attribute column the dataset provides (MovieLens ``gender``, ``age``,
  ``occupation``; :mod:`recsys.data.metadata`).

Users a slicing does not cover (not in the segments file, no attribute row) are left out of its
groups. Group values are means over the group's users, so the overall metric is the
size-weighted mean of the group values when every user is covered.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ConfigError, DataError
from recsys.metrics.beyond import activity_labels, group_means


def activity_names(thresholds: Sequence[int]) -> list[str]:
    if len(thresholds) == 2:
        return ["cold", "light", "heavy"]
    bounds = [0, *thresholds]
    names = [f"{a}-{b - 1}" for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
    return [*names, f">={bounds[-1]}"]


def _check_thresholds(value: Any) -> list[int]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) >= 1
        and all(isinstance(v, int) and v >= 1 for v in value)
    )
    if not ok or list(value) != sorted(set(value)):
        raise ConfigError(
            f"eval.groups.activity must be increasing positive integers, got {value!r}"
        )
    return list(value)


def read_segments(path: str | Path) -> dict[str, str]:
    """External user id (string) → segment label, from a CSV with ``user`` and ``segment``."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"eval.groups.segments: no such file: {p}")
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"user", "segment"} <= set(reader.fieldnames):
            raise DataError(f"{p}: needs columns 'user' and 'segment', has {reader.fieldnames}")
        return {row["user"].strip(): row["segment"].strip() for row in reader}


def labels_for(
    groups_cfg: Mapping[str, Any] | None,
    users: np.ndarray,
    user_ids: np.ndarray,
    train_counts: np.ndarray,
    data_cfg: Mapping[str, Any],
) -> dict[str, tuple[np.ndarray, list[str] | None]]:
    """For each configured slicing: (group label of each of ``users`` (internal ids), order)."""
    cfg = dict(groups_cfg or {})
    unknown = set(cfg) - {"activity", "segments", "attribute"}
    if unknown:
        raise ConfigError(
            f"eval.groups: unknown keys {sorted(unknown)} (activity, segments, attribute)"
        )
    out: dict[str, tuple[np.ndarray, list[str] | None]] = {}
    if cfg.get("activity"):
        th = _check_thresholds(cfg["activity"])
        names = activity_names(th)
        out["activity"] = (activity_labels(train_counts[users], th, names), names)
    ext = np.asarray(user_ids)[users].astype(str)
    if cfg.get("segments"):
        seg = read_segments(cfg["segments"])
        out["segment"] = (np.array([seg.get(u) for u in ext], dtype=object), None)
    if cfg.get("attribute"):
        from recsys.data.metadata import USER_ATTRIBUTES, user_attributes

        column = str(cfg["attribute"])
        attrs = user_attributes(data_cfg)
        if attrs is None:
            raise ConfigError(
                f"eval.groups.attribute={column}: dataset {data_cfg.get('name')!r} has no user "
                "attribute file (u.user / users.dat)"
            )
        if column not in attrs.columns or column == "user":
            raise ConfigError(
                f"eval.groups.attribute must be one of {list(USER_ATTRIBUTES)}, got {column!r}"
            )
        lookup = dict(zip(attrs["user"], attrs[column], strict=False))
        out[column] = (np.array([lookup.get(u) for u in ext], dtype=object), None)
    return out


def by_group(
    per_user: Mapping[str, np.ndarray],
    groups_cfg: Mapping[str, Any] | None,
    user_ids: np.ndarray,
    train_counts: np.ndarray,
    data_cfg: Mapping[str, Any],
) -> dict[str, dict[str, dict[str, float]]]:
    """``{slicing: {group: {"n_users": n, metric: mean}}}`` for the per-user values of a stage
    (the overall metrics; item-slice values such as ``cold/ndcg@10`` are left out)."""
    users = np.asarray(per_user["user"], dtype=np.int64)
    per_user = {k: v for k, v in per_user.items() if "/" not in k}
    out = {}
    for name, (labels, order) in labels_for(
        groups_cfg, users, user_ids, train_counts, data_cfg
    ).items():
        out[name] = group_means(per_user, labels, order)
    return out
