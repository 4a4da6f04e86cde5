r"""Rating-prediction errors, as pure tensor functions.

For held-out ratings :math:`r_1, \dots, r_n` and predictions :math:`\hat r_1, \dots, \hat r_n`
(pooled over all users, each rating counting once, as in the MovieLens / Netflix literature):

- ``rmse`` :math:`= \sqrt{\frac{1}{n} \sum_t (\hat r_t - r_t)^2}`
- ``mae``  :math:`= \frac{1}{n} \sum_t |\hat r_t - r_t|`

Evaluation accumulates per-user sums (:func:`error_sums`) so chunks of users can be combined
exactly (:func:`pooled`); per-user values are the same formulas over one user's ratings.
"""

from __future__ import annotations

import torch
from torch import Tensor

RATING_METRICS = ("rmse", "mae")


def rmse(pred: Tensor, target: Tensor) -> Tensor:
    return torch.sqrt(torch.mean((pred.double() - target.double()) ** 2))


def mae(pred: Tensor, target: Tensor) -> Tensor:
    return torch.mean(torch.abs(pred.double() - target.double()))


def error_sums(pred: Tensor, target: Tensor, rows: Tensor, n_rows: int) -> dict[str, Tensor]:
    """Per-row sums ``{"sse": (n_rows,), "sae": (n_rows,), "count": (n_rows,)}`` (float64) of
    squared and absolute errors of ratings belonging to batch row ``rows``."""
    err = pred.double() - target.double()
    out = {}
    for name, v in (("sse", err * err), ("sae", err.abs()), ("count", torch.ones_like(err))):
        out[name] = torch.zeros(n_rows, dtype=torch.float64, device=err.device).index_add_(
            0, rows, v
        )
    return out


def pooled(
    sums: dict[str, Tensor], metrics: tuple[str, ...] | list[str] = RATING_METRICS
) -> dict[str, float]:
    """Pooled ``rmse`` / ``mae`` from summed per-row errors."""
    n = float(sums["count"].sum())
    out = {}
    if "rmse" in metrics:
        out["rmse"] = (float(sums["sse"].sum()) / n) ** 0.5
    if "mae" in metrics:
        out["mae"] = float(sums["sae"].sum()) / n
    return out


def per_row(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-row ``rmse`` / ``mae`` (NaN for a row without ratings)."""
    n = sums["count"]
    return {"rmse": torch.sqrt(sums["sse"] / n), "mae": sums["sae"] / n}
