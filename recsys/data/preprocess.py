"""Preprocessing of a raw interaction frame (external ids), before ids are encoded.

Each step is a pure function ``DataFrame -> DataFrame`` over the columns ``user, item`` and the
optional ``time, rating``; :func:`preprocess` applies them in the standard order and names the
step that emptied the data, if one does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import DataError


def binarize(df: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    """Keep events with ``rating >= threshold`` (implicit conversion); ``None`` keeps all."""
    if threshold is None:
        return df
    if "rating" not in df:
        raise DataError(
            f"data.rating_threshold={threshold} needs a rating column, but this dataset has none"
        )
    return df[df["rating"].to_numpy() >= threshold]


def pair_codes(df: pd.DataFrame) -> np.ndarray:
    """(n,) int64: one code per distinct (user, item) pair (vectorized; no multi-column hash)."""
    codes = []
    for col in ("user", "item"):
        x = df[col].to_numpy()
        if x.dtype.kind in "iu" and len(x) and x.min() >= 0:
            codes.append(x.astype(np.int64, copy=False))
        else:
            codes.append(pd.factorize(x)[0].astype(np.int64))
    u, i = codes
    width = int(i.max()) + 1 if len(i) else 1
    if len(u) and int(u.max()) >= np.iinfo(np.int64).max // width:  # would overflow: re-code
        u = pd.factorize(u)[0].astype(np.int64)
        i = pd.factorize(i)[0].astype(np.int64)
        width = int(i.max()) + 1
    return u * width + i


def deduplicate(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one event per (user, item): the latest in time (the last in the log on ties)."""
    key = pair_codes(df)
    if "time" in df:
        # stable sort by time, then keep the last occurrence of each pair, in original log order
        order = np.argsort(df["time"].to_numpy(), kind="stable")
        last = ~pd.Series(key[order]).duplicated(keep="last").to_numpy()
        keep = np.zeros(len(df), dtype=bool)
        keep[order[last]] = True
    else:
        keep = ~pd.Series(key).duplicated(keep="last").to_numpy()
    return df if keep.all() else df[keep]


def kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Iteratively drop users with < ``min_user`` events and items with < ``min_item`` events
    until both hold (the k-core of the bipartite graph)."""
    if min_user <= 1 and min_item <= 1:
        return df
    u = pd.factorize(df["user"])[0]
    i = pd.factorize(df["item"])[0]
    keep = np.ones(len(df), dtype=bool)
    while True:
        u_cnt = np.bincount(u[keep], minlength=u.max() + 1 if len(u) else 0)
        i_cnt = np.bincount(i[keep], minlength=i.max() + 1 if len(i) else 0)
        new = keep & (u_cnt[u] >= min_user) & (i_cnt[i] >= min_item)
        if new.sum() == keep.sum():
            break
        keep = new
    return df[keep]


def filter_history_length(df: pd.DataFrame, min_len: int, max_len: int | None) -> pd.DataFrame:
    """Keep users whose number of events lies in ``[min_len, max_len]``."""
    n = df.groupby("user", sort=False)["item"].transform("size").to_numpy()
    keep = n >= min_len
    if max_len is not None:
        keep &= n <= max_len
    return df[keep]


def preprocess(
    df: pd.DataFrame,
    *,
    rating_threshold: float | None = None,
    dedup: bool = True,
    min_user_interactions: int = 0,
    min_item_interactions: int = 0,
    min_history: int = 0,
    max_history: int | None = None,
    source: str = "dataset",
) -> pd.DataFrame:
    """Apply the standard steps in order; raise :class:`DataError` naming the step that empties
    the data."""
    steps = [
        ("rating threshold (data.rating_threshold)", lambda d: binarize(d, rating_threshold)),
        ("de-duplication (data.dedup)", lambda d: deduplicate(d) if dedup else d),
        (
            "k-core filtering (data.min_user_interactions / data.min_item_interactions)",
            lambda d: kcore(d, min_user_interactions, min_item_interactions),
        ),
        (
            "history length filter (data.min_history / data.max_history)",
            lambda d: (
                filter_history_length(d, min_history, max_history)
                if (min_history > 0 or max_history is not None)
                else d
            ),
        ),
    ]
    if len(df) == 0:
        raise DataError(f"{source}: no interactions were loaded")
    for name, step in steps:
        df = step(df)
        if len(df) == 0:
            raise DataError(f"{source}: no interactions left after {name}")
    return df.reset_index(drop=True)


def preprocess_config(df: pd.DataFrame, cfg: Mapping[str, Any], source: str) -> pd.DataFrame:
    """:func:`preprocess` with the steps' values read from a data config."""
    return preprocess(
        df,
        rating_threshold=cfg.get("rating_threshold"),
        dedup=bool(cfg.get("dedup", True)),
        min_user_interactions=int(cfg.get("min_user_interactions", 0)),
        min_item_interactions=int(cfg.get("min_item_interactions", 0)),
        min_history=int(cfg.get("min_history", 0)),
        max_history=cfg.get("max_history"),
        source=source,
    )
