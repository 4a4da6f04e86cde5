"""A synthetic rating log with the shape of MovieLens-20M, to check the ML-20M experiments end to end.

ML-20M (138,493 users, 26,744 movies, 20,000,263 ratings, every user with >= 20 ratings, about half
the ratings >= 4) is not available offline. This data source generates a log of that shape: user
activity log-normal with the same mean and floor, Zipf item popularity, users drawing most items
from a taste group, and ratings with ML-20M's marginal distribution. Use it in place of the
``data.source`` of an ``*_ml20m`` experiment (from the repository root, so ``benchmarks`` imports):

    python -m recsys.cli.train experiment=multvae_ml20m data.source=benchmarks.scripts.ml20m_standin.load

Optional keys (``+data.<key>=...``) scale it down: ``standin_users``, ``standin_items``,
``standin_mean_length``, ``standin_min_length``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

# ML-20M's rating values and their shares (GroupLens README statistics, rounded)
RATINGS = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0], dtype=np.float32)
SHARES = np.array([0.012, 0.034, 0.014, 0.072, 0.044, 0.213, 0.110, 0.277, 0.077, 0.147])


def generate(
    n_users: int = 138_493,
    n_items: int = 26_744,
    mean_length: float = 144.4,
    min_length: int = 20,
    n_groups: int = 20,
    p_taste: float = 0.6,
    seed: int = 0,
) -> pd.DataFrame:
    """Frame ``user, item, rating, time`` (external ids from 1), one rating per (user, item)."""
    rng = np.random.default_rng(seed)
    sigma = 1.1
    lengths = rng.lognormal(
        np.log(max(mean_length - min_length, 1.0)) - sigma**2 / 2, sigma, n_users
    )
    # draws repeat items (about 30% at full size, then dropped): draw more so that the unique
    # ratings per user have the requested mean
    lengths = (min_length + np.round(lengths * 1.45)).astype(np.int64).clip(max=n_items // 2)
    user = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    n = len(user)
    order = rng.permutation(n_items)  # item at popularity rank r is order[r]
    per_group = max(n_items // n_groups, 1)

    def zipf_rank(size: int, m: int) -> np.ndarray:  # ranks in [0, m) with P(r) ~ 1 / (r + 1)
        return np.minimum(np.floor(np.expm1(rng.random(size) * np.log1p(m))), m - 1).astype(
            np.int64
        )

    group = rng.integers(n_groups, size=n_users)[user]
    taste = rng.random(n) < p_taste
    rank = zipf_rank(n, n_items)
    rank_in_group = zipf_rank(n, per_group) * n_groups + group  # ranks r with r % G == group
    rank = np.where(taste & (rank_in_group < n_items), rank_in_group, rank)
    df = pd.DataFrame(
        {
            "user": user + 1,
            "item": order[rank] + 1,
            "rating": rng.choice(RATINGS, size=n, p=SHARES / SHARES.sum()),
            "time": rng.random(n) * 1e9,
        }
    )
    return df[~df.duplicated(["user", "item"])].reset_index(drop=True)


def load(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Data source (``data.source=benchmarks.scripts.ml20m_standin.load``)."""
    return generate(
        n_users=int(cfg.get("standin_users", 138_493)),
        n_items=int(cfg.get("standin_items", 26_744)),
        mean_length=float(cfg.get("standin_mean_length", 144.4)),
        min_length=int(cfg.get("standin_min_length", 20)),
        seed=int(cfg.get("standin_seed", 0)),
    )
