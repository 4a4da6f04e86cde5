"""The one path every dataset takes: source → preprocess → encode ids → split.

A data config (``configs/data/*.yaml``) names its ``source``, a dotted path to a function
``(data config) -> DataFrame`` returning external ids in columns ``user, item`` and the optional
``time, rating``; the remaining keys set preprocessing and the split.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data import optout, sources
from recsys.data.audit import audit_features, audit_split
from recsys.data.cache import cache_dir, cache_key
from recsys.data.cache import load as cache_load
from recsys.data.cache import save as cache_save
from recsys.data.features import ENTITIES, encode
from recsys.data.interactions import Interactions, Split, has_clock
from recsys.data.preprocess import preprocess_config
from recsys.data.sources import data_root, notice, raw_files
from recsys.data.sources import features as feature_sources
from recsys.data.splits import SPLITS, check_cold_item_ratio, check_ratios, make_split
from recsys.errors import ConfigError

# Keys of a data config that change where files live or how batches are cut, not what the data is.
LOADER_KEYS = frozenset(
    {
        "root",
        "cache_dir",
        "cache",
        "download",
        "remote",
        "batch_size",
        "num_workers",
        "seq_windowing",
        "seq_bucket",
        "seq_weight_positions",
        # retired: the sequence window is model.max_len now; data configs stored in earlier
        # checkpoints still carry it, and it never changed the data
        "max_seq_len",
    }
)
# Splits that draw random numbers: their seed is part of the cache key.
SEEDED_SPLITS = frozenset({"random", "holdout_users", "cold_items"})


def resolve_source(path: str) -> Callable[[Mapping[str, Any]], pd.DataFrame]:
    """Import the source function named by ``data.source``."""
    module, _, name = str(path).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"data.source: cannot import {path!r}") from None
    return fn


def _unset(cfg: Mapping[str, Any], prefix: str = "data") -> str | None:
    """The first key left at OmegaConf's mandatory marker ``???``, dotted (``data.path``)."""
    for k, v in cfg.items():
        if isinstance(v, str) and v == "???":
            return f"{prefix}.{k}"
        if isinstance(v, Mapping):
            found = _unset(v, f"{prefix}.{k}")
            if found:
                return found
    return None


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse a data config that cannot work, decided by the config alone, before any file is
    read: a mandatory key left unset (``data=csv`` without ``data.path``, ``data=atomic``
    without ``data.name``) and the source's own checks (:func:`recsys.data.sources.check_config`).
    One :class:`ConfigError` line naming the key."""
    key = _unset(cfg)
    if key is not None:
        raise ConfigError(f"{key} must be set for this dataset (add {key}=...)")
    if not cfg.get("source"):
        raise ConfigError("data.source must name a loader (a dotted path)")
    sources.check_config(cfg)
    feature_sources.check_config(cfg)
    _check_values(cfg)


def _check_values(cfg: Mapping[str, Any]) -> None:
    """The preprocessing and split values, checked before any file is read (the split itself
    checks them again, for callers of :mod:`recsys.data.splits`)."""

    def number(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"data.{key} must be a number, got {value!r}")
        return float(value)

    def count(key: str, value: Any, low: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"data.{key} must be an integer >= {low}, got {value!r}")

    split = str(cfg.get("split", "leave_one_out"))
    if split not in SPLITS:
        raise ConfigError(f"data.split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split in ("random", "temporal"):
        check_ratios(
            number("val_ratio", cfg.get("val_ratio", 0.1)),
            number("test_ratio", cfg.get("test_ratio", 0.1)),
        )
    if split == "cold_items":
        check_cold_item_ratio(cfg.get("cold_item_ratio", 0.2))
    if split == "holdout_users":
        count("n_heldout_users", cfg.get("n_heldout_users"), 1)
        if not 0 < number("fold_in_ratio", cfg.get("fold_in_ratio", 0.8)) < 1:
            raise ConfigError(
                f"data.fold_in_ratio must be in (0, 1), got {cfg.get('fold_in_ratio')}"
            )
        if cfg.get("fold_in_events") is not None:
            count("fold_in_events", cfg["fold_in_events"])
    for key in ("min_user_interactions", "min_item_interactions", "min_history"):
        count(key, cfg.get(key) or 0)
    if cfg.get("max_history") is not None:
        count("max_history", cfg["max_history"], 1)
    if cfg.get("rating_threshold") is not None:
        number("rating_threshold", cfg["rating_threshold"])
    if cfg.get("split_seed") is not None:
        count("split_seed", cfg["split_seed"])


def resolve_data_config(data: Any) -> dict[str, Any]:
    """The ``data`` node of a composed config resolved to a plain dict and checked
    (:func:`check_config`); a mandatory value left unset, also one reached through an
    interpolation (``files: ["${data.name}.inter"]`` of ``data=atomic``), is one
    :class:`ConfigError` line naming the key instead of OmegaConf's traceback."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    if isinstance(data, DictConfig):
        try:
            data = OmegaConf.to_container(data, resolve=True, throw_on_missing=True)
        except (MissingMandatoryValue, InterpolationToMissingValueError) as e:
            missing = re.search(r"Missing mandatory value: ([\w.]+)", str(e))
            key = missing.group(1) if missing else str(e.full_key)
            key = key if key.startswith("data.") else f"data.{key}"
            raise ConfigError(f"{key} must be set for this dataset (add {key}=...)") from None
    data = dict(data)
    check_config(data)
    return data


def fingerprint(cfg: Mapping[str, Any]) -> str:
    """A short hash of every value that determines the prepared data and split."""
    payload = _data_values(cfg)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _data_values(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config values that determine the prepared data (not :data:`LOADER_KEYS`), with
    ``source`` under its :func:`~recsys.data.sources.hashed_name`: a loader named by its module
    or by its older package-level name hashes the same."""
    values = {k: v for k, v in optout.cache_values(cfg).items() if k not in LOADER_KEYS}
    if isinstance(values.get("source"), str):
        values["source"] = sources.hashed_name(values["source"])
    return values


def _effective_seed(cfg: Mapping[str, Any], seed: int) -> int | None:
    """The seed the split uses (None when the split is deterministic without one)."""
    if str(cfg.get("split", "leave_one_out")) not in SEEDED_SPLITS:
        return None
    split_seed = cfg.get("split_seed")
    return int(seed if split_seed is None else split_seed)


def build(cfg: Mapping[str, Any], seed: int) -> Split:
    """Load, preprocess and split the dataset described by ``cfg``, without the cache."""
    check_config(cfg)
    name = cfg.get("name", "dataset")
    sources.NOTICES.clear()
    df = resolve_source(cfg["source"])(cfg)
    if isinstance(df, Split):  # a source with an official split of its own (recsys.data.folds)
        df, opted_out = optout.exclude_split(df, cfg)
        split = refit_full(replace(df, audit=_with_optout(audit_split(df), opted_out)), cfg)
        return attach_features(split, cfg)
    df, opted_out = optout.exclude(df, cfg)  # opt-out before any filter sees the users
    df = preprocess_config(df, cfg, source=str(name))
    inter = Interactions.from_frame(df)
    del df  # the frame's id columns are encoded; keep one copy of the log alive, not two
    split_seed = cfg.get("split_seed")
    split = make_split(
        inter,
        str(cfg.get("split", "leave_one_out")),
        float(cfg.get("val_ratio", 0.1)),
        float(cfg.get("test_ratio", 0.1)),
        seed=int(seed if split_seed is None else split_seed),
        n_heldout_users=int(cfg.get("n_heldout_users") or 0),
        fold_in_ratio=float(cfg.get("fold_in_ratio", 0.8)),
        cold_item_ratio=float(cfg.get("cold_item_ratio", 0.2)),
        fold_in_events=cfg.get("fold_in_events"),
    )
    del inter  # the split's parts are copies
    audit = audit_split(split, repeats=not bool(cfg.get("dedup", True)))
    return attach_features(
        refit_full(replace(split, audit=_with_optout(audit, opted_out)), cfg), cfg
    )


def attach_features(split: Split, cfg: Mapping[str, Any]) -> Split:
    """The split with its item and user attribute tables (``data.item_features`` /
    ``data.user_features``, :mod:`recsys.data.sources.features`), encoded over the split's id
    space with vocabularies and normalisation from training entities only: those with an event
    in ``split.train`` (with ``holdout_users``: the training users; with ``refit_full``: train +
    validation, what the final fit trains on).

    An opted-out user's attribute row (and a tag an opted-out user wrote) is dropped before
    anything is encoded; rows that carry a time (tags) count only up to the latest training
    event when the log has a clock. The audit gains ``features`` (:func:`audit_features`)."""
    value = cfg.get(optout.KEY)
    listed = optout.read_ids(Path(str(value)).expanduser()) if value else []
    train = split.train
    before = float(train.time.max()) if has_clock(train) else None
    min_count = int(cfg.get("feature_min_count") or 1)
    tables, report = {}, {}
    for entity in ENTITIES:
        raw = feature_sources.load_features(cfg, entity, before=before, exclude_users=listed)
        if raw is None:
            continue
        if entity == "user" and listed:
            raw = raw.take(~np.isin(np.asarray(raw.ids).astype(str), np.asarray(listed, str)))
        ids = train.item_ids if entity == "item" else train.user_ids
        seen = np.bincount(train.item if entity == "item" else train.user, minlength=len(ids))
        tables[entity] = encode(raw, ids, seen > 0, min_count=min_count)
        report[entity] = audit_features(raw, tables[entity], ids, seen > 0, min_count)
    if not tables:
        return split
    audit = dict(split.audit or {})
    audit["features"] = report
    audit["ok"] = bool(audit.get("ok", True)) and all(r["ok"] for r in report.values())
    return replace(
        split,
        item_features=tables.get("item"),
        user_features=tables.get("user"),
        audit=audit,
    )


def refit_full(split: Split, cfg: Mapping[str, Any]) -> Split:
    """``data.refit_full``: the final fit on train + validation, after the number of epochs
    (or any other setting) was chosen on validation in a run without it. Validation keeps its
    events, now inside training: its metrics are in-sample and must select nothing (run with
    a fixed ``trainer.max_epochs``, no early stopping, the last epoch's checkpoint). The audit
    describes the split before the merge and records ``refit_full``."""
    if not cfg.get("refit_full"):
        return split
    if split.val_input is not None:
        raise ConfigError(
            "data.refit_full needs validation users that are training users "
            f"(not data.split={cfg.get('split')})"
        )
    audit = {**(split.audit or {}), "refit_full": True}
    return replace(split, train=split.train.concat(split.val), audit=audit)


def _with_optout(audit: dict[str, Any], opted_out: dict[str, Any] | None) -> dict[str, Any]:
    """The audit plus what ``data.exclude_users`` removed (counts and file hash, no ids)."""
    return {**audit, "opt_out": opted_out} if opted_out is not None else audit


def cache_path(cfg: Mapping[str, Any], seed: int) -> tuple[Path, str] | None:
    """Where the prepared split of ``cfg`` is cached and its key, or None when it is not cached
    (``data.cache=false``, a source without raw files such as ``synthetic``, or no writable
    cache directory). Downloads missing raw files first."""
    check_config(cfg)
    if not cfg.get("cache", True):
        return None
    files = raw_files(cfg)
    if not files:
        return None
    # the feature files' bytes are part of the key, like the log's
    files = files + [p for e in ENTITIES for p in feature_sources.feature_files(cfg, e)]
    cdir = cache_dir(cfg, data_root(cfg))
    if cdir is None:
        return None
    values = _data_values(cfg)
    values["_split_seed"] = _effective_seed(cfg, seed)
    key = cache_key(values, files)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cfg.get("name", "dataset")))
    return cdir / f"{name}-{key[:20]}.npz", key


def prepare(cfg: Mapping[str, Any], seed: int) -> Split:
    """Load, preprocess and split the dataset described by ``cfg`` (a plain dict), through the
    cache: a cached split with the same key is reused (one line on stderr says so); otherwise
    it is built and written atomically. The returned split carries its audit (``Split.audit``).
    """
    where = cache_path(cfg, seed)
    if where is None:
        return build(cfg, seed)
    path, key = where
    if path.is_file():
        hit = cache_load(path, key)
        if hit is not None:
            for message in hit[1].get("notices") or []:
                notice(message)  # what the source said when the cache was built
            notice(f"data: reusing cached {cfg.get('name')} split {path}")
            return hit[0]
        notice(f"data: cache file {path} is unreadable or stale; rebuilding it")
    split = build(cfg, seed)
    try:
        cache_save(
            path,
            split,
            key,
            {
                "audit": split.audit,
                "notices": list(sources.NOTICES),
                "config": {
                    k: v for k, v in optout.cache_values(cfg).items() if k not in LOADER_KEYS
                },
            },
        )
    except OSError as e:  # a full disk must not fail the run: the split is in memory
        notice(f"data: could not write the cache {path} ({e.strerror or e})")
    return split
