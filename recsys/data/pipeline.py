"""The one path every dataset takes: source → preprocess → encode ids → split.

A data config (``configs/data/*.yaml``) names its ``source``, a dotted path to a function
``(data config) -> DataFrame`` returning external ids in columns ``user, item`` and the optional
``time, rating``; the remaining keys set preprocessing and the split.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from recsys.data.interactions import Interactions, Split
from recsys.data.preprocess import preprocess
from recsys.data.splits import make_split
from recsys.errors import ConfigError

# Keys of a data config that change where files live or how batches are cut, not what the data is.
LOADER_KEYS = frozenset({"root", "cache_dir", "batch_size", "max_seq_len", "num_workers"})


def resolve_source(path: str) -> Callable[[Mapping[str, Any]], pd.DataFrame]:
    """Import the source function named by ``data.source``."""
    module, _, name = str(path).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"data.source: cannot import {path!r}") from None
    return fn


def fingerprint(cfg: Mapping[str, Any]) -> str:
    """A short hash of every value that determines the prepared data and split."""
    payload = {k: v for k, v in sorted(cfg.items()) if k not in LOADER_KEYS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(cfg: Mapping[str, Any], seed: int) -> Split:
    """Load, preprocess and split the dataset described by ``cfg`` (a plain dict)."""
    name = cfg.get("name", "dataset")
    df = resolve_source(cfg["source"])(cfg)
    df = preprocess(
        df,
        rating_threshold=cfg.get("rating_threshold"),
        dedup=bool(cfg.get("dedup", True)),
        min_user_interactions=int(cfg.get("min_user_interactions", 0)),
        min_item_interactions=int(cfg.get("min_item_interactions", 0)),
        min_history=int(cfg.get("min_history", 0)),
        max_history=cfg.get("max_history"),
        source=str(name),
    )
    inter = Interactions.from_frame(df)
    split_seed = cfg.get("split_seed")
    return make_split(
        inter,
        str(cfg.get("split", "leave_one_out")),
        float(cfg.get("val_ratio", 0.1)),
        float(cfg.get("test_ratio", 0.1)),
        seed=int(seed if split_seed is None else split_seed),
    )
