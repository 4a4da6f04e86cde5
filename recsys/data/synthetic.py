"""A deterministic synthetic implicit-feedback log shaped like real ones.

Structure planted in the data, so that model families score differently on it:

- long-tailed item popularity (Zipf weights over a random item order) and long-tailed user
  activity (log-normal history lengths): the popularity baseline is non-trivial;
- users belong to one of ``n_groups`` taste groups and draw most items from their group's items:
  collaborative models (MF, autoencoders) beat popularity by a wide margin;
- with probability ``p_sequential`` a user's next item is the fixed successor of their previous
  item (a cycle through each group's items): sequence models beat order-agnostic ones;
- attributes (:func:`features`): an item's ``genre`` is its taste group and a user's ``segment``
  theirs, next to a ``brand`` / ``region`` drawn at random (noise): a model that reads attributes
  can place an item with no interactions, which an id-only model cannot.

Generation is vectorized over users (a loop over history positions only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.features import RawFeatures
from recsys.errors import ConfigError

DAY = 86_400.0


def generate(
    n_users: int = 2000,
    n_items: int = 1000,
    n_groups: int = 8,
    mean_length: float = 40.0,
    min_length: int = 5,
    max_length: int = 200,
    popularity_alpha: float = 1.0,
    p_taste: float = 0.6,
    p_sequential: float = 0.25,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Generate the log and its ground truth.

    Returns:
        A frame with columns ``user, item, time`` (external ids are 1-based integers, time in
        seconds, one event per (user, item): repeats are dropped, keeping the first), and the
        ground truth ``{"user_group": (n_users,), "item_group": (n_items,),
        "successor": (n_items,)}`` indexed by external id - 1.
    """
    _check(n_users, n_items, n_groups, mean_length, min_length, max_length, p_taste, p_sequential)
    rng = np.random.default_rng(seed)
    item_group = rng.integers(n_groups, size=n_items)
    weight = 1.0 / (rng.permutation(n_items) + 1.0) ** popularity_alpha  # Zipf over a random order
    cdf_global = np.cumsum(weight) / weight.sum()

    # per-group popularity-weighted distributions, stacked so one searchsorted samples any group:
    # row g of ``cdf_groups`` runs from g to g + 1.
    in_group = item_group[None, :] == np.arange(n_groups)[:, None]  # (G, I)
    w_group = np.where(in_group, weight[None, :], 0.0) + 1e-12
    cdf_groups = (np.cumsum(w_group, axis=1) / w_group.sum(axis=1, keepdims=True)).clip(max=1.0)
    cdf_groups = (cdf_groups + np.arange(n_groups)[:, None]).ravel()

    # successor: a random cycle through each group's items
    successor = np.arange(n_items)
    for g in range(n_groups):
        members = rng.permutation(np.flatnonzero(item_group == g))
        if len(members) > 1:
            successor[members] = np.roll(members, -1)

    user_group = rng.integers(n_groups, size=n_users)
    sigma = 0.8
    lengths = rng.lognormal(np.log(mean_length) - sigma**2 / 2, sigma, size=n_users)
    lengths = np.clip(np.round(lengths), min_length, max_length).astype(np.int64)

    seq = np.full((n_users, int(lengths.max())), -1, dtype=np.int64)
    for t in range(seq.shape[1]):
        active = np.flatnonzero(lengths > t)
        r = rng.random(len(active))
        u = rng.random(len(active))
        g = user_group[active]
        from_group = np.searchsorted(cdf_groups, g + u * (1 - 1e-9)) - g * n_items
        from_global = np.searchsorted(cdf_global, u)
        nxt = np.where(r < p_taste, from_group, from_global)
        if t > 0:
            follow = r > 1 - p_sequential
            nxt = np.where(follow, successor[seq[active, t - 1]], nxt)
        seq[active, t] = np.clip(nxt, 0, n_items - 1)

    users, pos = np.nonzero(seq >= 0)
    items = seq[users, pos]
    start = rng.uniform(0, 300 * DAY, size=n_users)
    gaps = rng.exponential(DAY, size=seq.shape)
    times = start[:, None] + np.cumsum(gaps, axis=1)
    df = pd.DataFrame({"user": users + 1, "item": items + 1, "time": np.floor(times[users, pos])})
    df = df[~df.duplicated(["user", "item"], keep="first")].reset_index(drop=True)
    truth = {"user_group": user_group, "item_group": item_group, "successor": successor}
    return df, truth


def load(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Data source for ``data=synthetic``: reads the generator's keys from the data config."""
    keys = (
        "n_users n_items n_groups mean_length min_length max_length popularity_alpha "
        "p_taste p_sequential"
    ).split()
    df, _ = generate(
        **{k: cfg[k] for k in keys if k in cfg}, seed=int(cfg.get("generator_seed", 0))
    )
    return df


def features(cfg: Mapping[str, Any], entity: str) -> RawFeatures:
    """The synthetic log's attributes, for ``data.<entity>_features: auto`` (the generator's
    ground truth, so they match the log whatever its size): items ``genre`` (the item's taste
    group) and ``brand`` (random, ``n_items // 20 + 1`` values); users ``segment`` (the user's
    taste group) and ``region`` (random, 5 values). Deterministic given ``generator_seed``."""
    keys = (
        "n_users n_items n_groups mean_length min_length max_length popularity_alpha "
        "p_taste p_sequential"
    ).split()
    seed = int(cfg.get("generator_seed", 0))
    _, truth = generate(**{k: cfg[k] for k in keys if k in cfg}, seed=seed)
    rng = np.random.default_rng([seed, 1])
    if entity == "item":
        group = truth["item_group"]
        noise = rng.integers(len(group) // 20 + 1, size=len(group))
        names = ("genre", "brand")
    else:
        group = truth["user_group"]
        noise = rng.integers(5, size=len(group))
        names = ("segment", "region")
    n = len(group)
    rows = np.arange(n, dtype=np.int64)
    categorical = pd.DataFrame(
        {
            "row": np.concatenate([rows, rows]),
            "field": np.repeat(np.array(names, dtype=object), n),
            "value": np.concatenate(
                [np.char.add("g", group.astype(str)), np.char.add("n", noise.astype(str))]
            ).astype(object),
        }
    )
    return RawFeatures(entity, rows + 1, categorical, {}, f"synthetic {entity} attributes")


def _check(n_users, n_items, n_groups, mean_length, min_length, max_length, p_taste, p_seq) -> None:
    for key, value in (("n_users", n_users), ("n_items", n_items), ("n_groups", n_groups)):
        if value < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {value}")
    if not 1 <= min_length <= max_length:
        raise ConfigError(
            f"data.min_length and data.max_length must satisfy 1 <= min <= max, got {min_length}, {max_length}"
        )
    if mean_length <= 0:
        raise ConfigError(f"data.mean_length must be > 0, got {mean_length}")
    for key, value in (("p_taste", p_taste), ("p_sequential", p_seq)):
        if not 0 <= value <= 1:
            raise ConfigError(f"data.{key} must be in [0, 1], got {value}")
    if p_taste + p_seq > 1:
        raise ConfigError(f"data.p_taste + data.p_sequential must be <= 1, got {p_taste + p_seq}")
