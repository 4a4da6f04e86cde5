r"""Beyond accuracy: popularity bias of the recommendations, and metrics per user group.

Popularity bias, from every evaluated user's top-K list (:math:`L_u`, items ranked by the
model after masking seen items) and the items' training counts :math:`c_i`:

- ``coverage@K`` :math:`= |\bigcup_u L_u| / |I|`: share of the catalogue recommended to anyone;
- ``gini@K``: Gini coefficient of how often each catalogue item appears in the lists
  (0: every item equally often, near 1: a few items fill every list);
- ``arp@K`` (average recommendation popularity, Abdollahpouri et al. 2019), per user
  :math:`\frac{1}{K}\sum_{i \in L_u} c_i` — the mean number of training events of the items
  recommended; its mean over users is the reported value.

Per-group metrics (:func:`group_means`) are plain means over the users of each group, so the
overall mean equals the size-weighted mean of the group means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of a non-negative vector (0: uniform; (n-1)/n: all mass on one entry)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1.0) / n)


def average_popularity(top: Tensor, item_pop: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user ``arp@K``: mean training count of the top-K items; top: (B, K_max) item ids."""
    pop = item_pop[top].double()  # (B, K_max)
    return {f"arp@{k}": pop[:, :k].mean(1) for k in ks}


def list_metrics(top: Tensor | np.ndarray, num_items: int, ks: Sequence[int]) -> dict[str, float]:
    """``coverage@K`` and ``gini@K`` of a set of top-K lists; top: (U, K_max) item ids."""
    t = torch.as_tensor(top).long().cpu()
    out: dict[str, float] = {}
    for k in ks:
        counts = torch.bincount(t[:, :k].reshape(-1), minlength=num_items).numpy()
        out[f"coverage@{k}"] = float((counts > 0).sum() / num_items)
        out[f"gini@{k}"] = gini(counts)
    return out


def group_means(
    per_user: Mapping[str, np.ndarray], groups: np.ndarray, order: Sequence[Any] | None = None
) -> dict[str, dict[str, float]]:
    """Mean of every per-user metric within each group.

    Args:
        per_user: ``{"user": (U,), metric: (U,), ...}`` as in ``per_user_test.npz``.
        groups: (U,) group label of each row of ``per_user`` (aligned with ``per_user["user"]``);
            rows labelled ``None`` or ``""`` belong to no group and are left out.
        order: the groups to report, in this order (default: sorted labels present).
    Returns:
        ``{group: {"n_users": n, metric: mean, ...}}`` for every group with at least one user.
    """
    labels = np.asarray(groups, dtype=object)
    names = [k for k in per_user if k != "user"]
    present = [g for g in dict.fromkeys(labels.tolist()) if g not in (None, "")]
    keys = [g for g in order if g in present] if order is not None else sorted(present, key=str)
    out: dict[str, dict[str, float]] = {}
    for g in keys:
        m = labels == g
        out[str(g)] = {
            "n_users": int(m.sum()),
            **{k: float(np.asarray(per_user[k], dtype=np.float64)[m].mean()) for k in names},
        }
    return out


def activity_labels(
    history_len: np.ndarray, thresholds: Sequence[int], names: Sequence[str]
) -> np.ndarray:
    """Activity bucket of each user by training history length: bucket j holds lengths in
    ``[thresholds[j-1], thresholds[j])`` (``names`` has one more entry than ``thresholds``)."""
    if len(names) != len(thresholds) + 1:
        raise ValueError("activity bucket names must be one more than the thresholds")
    idx = np.searchsorted(np.asarray(thresholds), np.asarray(history_len), side="right")
    return np.asarray(names, dtype=object)[idx]
