"""Opt-out: users listed in ``data.exclude_users`` are removed before preprocessing.

The file holds one external user id per line (blank lines and lines starting with ``#`` are
ignored). Removal happens on the source's frame, before k-core filtering, id encoding and the
split, so an excluded user is in no part of the split, in no id map, and so in no file derived
from it (metrics, per-user values, segments, exports). The cache key and the data fingerprint
carry the file's SHA-256 (:func:`cache_values`), not its path or ids; the run records how many
users were removed, how many listed ids are not in the log, and the hash (:func:`summary`), never
the ids themselves.

Ids match exactly as written: a listed line (stripped of surrounding whitespace) equals the log's
id text (``data.id_type=str``, the default) or the decimal text of an integer id. ``007`` and
``7`` are different ids, so a list written for the other form removes nobody; a notice on stderr
(and ``not_found`` in the audit) says how many listed ids matched no user.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.sources.files import notice
from recsys.errors import ConfigError, DataError

KEY = "exclude_users"


def _path(cfg: Mapping[str, Any]) -> Path | None:
    value = cfg.get(KEY)
    if value in (None, "", False):
        return None
    p = Path(str(value)).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.{KEY}: no such file: {p}")
    return p


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_ids(path: Path) -> list[str]:
    """The listed external ids, as stripped strings (order kept, duplicates dropped)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.{KEY}: cannot read {path} ({e})") from None
    seen: dict[str, None] = {}
    for line in lines:
        s = line.strip()
        if s and not s.startswith("#"):
            seen.setdefault(s, None)
    return list(seen)


def cache_values(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``exclude_users`` replaced by the file's content hash: two files with the same
    ids share a cache entry, an edited file gets a new one."""
    out = dict(cfg)
    p = _path(cfg)
    if p is not None:
        out[KEY] = {"sha256": file_sha256(p)}
    elif KEY in out:
        out[KEY] = None
    return out


def _as_strings(values: Any) -> np.ndarray:
    """External ids as the texts an opt-out list holds: a string id as is, an integer id as its
    decimal text. Float ids are refused: their text (``12.0``, ``1e+20``) is not an id anyone
    wrote, and the sources never produce them."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        raise DataError(
            "data.exclude_users: the log's user ids are floating-point numbers, which cannot be "
            "matched exactly; the source must give integer or string ids"
        )
    if values.dtype.kind == "O":
        return np.array([v if isinstance(v, str) else str(v) for v in values], dtype=object)
    return values.astype(str)


def _report(listed: np.ndarray, users: np.ndarray) -> int:
    """How many listed ids match no user of the log; a notice says so (never which ids)."""
    not_found = int((~np.isin(listed, users)).sum()) if len(listed) else 0
    if not_found:
        notice(
            f"data.exclude_users: {not_found} of {len(listed)} listed ids match no user in the "
            "log (ids match exactly as written: 007 is not 7)",
            True,
        )
    return not_found


def exclude(df: pd.DataFrame, cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Drop the events of excluded users from a source frame; the frame and :func:`summary`."""
    p = _path(cfg)
    if p is None:
        return df, None
    ids = np.asarray(read_ids(p), dtype=object)
    codes, uniques = pd.factorize(df["user"].to_numpy())
    users = _as_strings(uniques)
    hit = np.isin(users, ids)  # per distinct user
    drop = hit[codes]
    not_found = _report(ids, users)
    info = summary(
        p, listed=len(ids), removed=int(hit.sum()), events=int(drop.sum()), not_found=not_found
    )
    return df.loc[~drop].reset_index(drop=True), info


def exclude_split(split: Any, cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """The same for a source that returns a ready :class:`~recsys.data.interactions.Split`
    (official folds): excluded users' events are dropped and user ids re-encoded, so the id map
    no longer holds them."""
    from dataclasses import replace

    from recsys.data.interactions import Interactions

    p = _path(cfg)
    if p is None:
        return split, None
    ids = np.asarray(read_ids(p), dtype=object)
    old_ids = split.train.user_ids
    keep_user = ~np.isin(_as_strings(old_ids), ids)
    new_index = np.cumsum(keep_user) - 1  # old internal id -> new internal id
    parts = {}
    events = 0
    present = np.zeros(len(old_ids), dtype=bool)
    for name in ("train", "val", "test", "val_input", "test_input"):
        part = getattr(split, name, None)
        if part is None:
            continue
        present[part.user] = True
        mask = keep_user[part.user]
        events += int((~mask).sum())
        sel = part.select(mask)
        parts[name] = Interactions(
            user=new_index[sel.user].astype(np.int64),
            item=sel.item,
            time=sel.time,
            rating=sel.rating,
            user_ids=old_ids[keep_user],
            item_ids=sel.item_ids,
        )
    removed = int((present & ~keep_user).sum())
    not_found = _report(ids, _as_strings(old_ids[present]))
    info = summary(p, listed=len(ids), removed=removed, events=events, not_found=not_found)
    return replace(split, **parts), info


def summary(
    path: Path, listed: int, removed: int, events: int, not_found: int = 0
) -> dict[str, Any]:
    """What a run records about its opt-out list: counts and the file hash, never the ids.
    ``not_found``: listed ids that match no user of the log."""
    return {
        "file_sha256": file_sha256(path),
        "users_listed": int(listed),
        "users_removed": int(removed),
        "events_removed": int(events),
        "not_found": int(not_found),
    }
