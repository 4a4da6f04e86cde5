"""One line per user, ``user item item ...`` in time order: the S3-Rec / ICLRec files of
Amazon Beauty, Sports, Toys and Yelp."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.sources.files import dataset_dir, finish_log
from recsys.errors import DataError


def load_user_sequences(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """One line per user, ``user item item ...`` in time order (S3-Rec / ICLRec format). The
    position in the line becomes the ``time`` column (0, 1, 2, ... per user): an order within
    each user, not a clock shared by all users."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    if cfg.get("rows_in_time_order"):
        raise DataError(
            f"{path}: data.rows_in_time_order=true does not apply: each line is one user's "
            "whole sequence, so the lines are not events in time order across users"
        )
    return finish_log(parse_user_sequences(path.read_bytes(), path), path)


def parse_user_sequences(raw: bytes, path: Path | str) -> pd.DataFrame:
    """Parse the one-line-per-user format from bytes (vectorized over tokens)."""
    text = raw.decode("utf-8", "replace")
    lengths = np.fromiter(map(len, map(str.split, text.splitlines())), dtype=np.int64)
    tokens = text.split()
    if not tokens:
        return pd.DataFrame({"user": [], "item": [], "time": []})
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[lengths > 0]
    try:
        ids = np.array(tokens, dtype=np.int64)
        bad_any = bool(len(ids)) and ids.min() < 0
    except (ValueError, OverflowError):
        bad_any = True
    if bad_any:
        num = pd.to_numeric(pd.Series(tokens, dtype=object), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(num) | (num < 0) | (np.floor(num) != num)
        i = int(np.argmax(bad))
        line_of = np.repeat(np.arange(len(lengths)), lengths)
        pos = i - starts[np.searchsorted(starts, i, side="right") - 1]
        raise DataError(
            f"{path}: line {line_of[i] + 1}: {'user' if pos == 0 else 'item'} id at field "
            f"{pos + 1} must be a non-negative integer, got {tokens[i]!r}"
        )
    is_user = np.zeros(len(ids), dtype=bool)
    is_user[starts] = True
    counts = lengths[lengths > 0]
    user = np.repeat(ids[starts], counts)[~is_user]
    pos = np.arange(len(ids)) - np.repeat(starts, counts)
    return pd.DataFrame({"user": user, "item": ids[~is_user], "time": pos[~is_user] - 1.0})
