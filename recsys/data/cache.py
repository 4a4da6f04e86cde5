"""A cache of prepared splits: preprocessing + split of a raw log, stored once and reused.

The key is a SHA-256 over the content of the raw files and every value that shapes the data
(every data config key except where files live and how batches are cut; the split seed when the
split is random). A cache file is ``<cache dir>/<name>-<key>.npz`` holding the three parts, the
id maps, the audit and the key itself; it is written to a temporary name and renamed, so a crash
never leaves a half-written file under the final name. A file that fails to load (truncated,
corrupted: the zip members carry CRCs) or whose stored key differs is rebuilt, never crashed on.

The key hashes the raw files' full content on every use, with no memo: a memo keyed by path,
size and modification time reused the old split after a same-size edit whose mtime was restored,
and hashing costs about 0.4 s per 478 MB (benchmarks/data.md, "Hashing the raw files"). Memo
files of earlier versions (``file-hashes.json``) are ignored.

The cache directory is ``data.cache_dir`` if set, else ``<data root>/cache``; when that is not
writable (a read-only shared data root), ``data/cache`` under the working directory is used.
Choosing it removes the temporary files of cache builds that were killed
(:func:`recsys.files.remove_stale_temps`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data.features import FeatureTable
from recsys.data.interactions import Interactions, Split
from recsys.files import atomic_write, new_temp, remove_stale_temps

# bump when the stored layout, the audit or the reading of raw files changes (3: ids are read as
# written or checked exactly, never through floats; 4: item and user feature tables)
CACHE_VERSION = 4
PARTS = ("train", "val", "test")
OPTIONAL_PARTS = ("val_input", "test_input")  # set by splits with held-out users


def writable(d: Path) -> bool:
    """Whether files may be created in ``d`` (created if needed). A directory whose mode has no
    write bit counts as read-only even for root, so a shared read-only data root is never
    written to."""
    existing = d
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if existing.is_dir() and not existing.stat().st_mode & 0o222:
            return False
    except OSError:
        return False
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = new_temp(d, "probe")  # named like atomic_write's: a kill here is cleaned too
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def cache_dir(cfg: Mapping[str, Any], root: Path) -> Path | None:
    """The first writable of ``data.cache_dir`` / ``<root>/cache``, then ``./data/cache``, with
    the temporary files of killed cache builds removed from it."""
    first = Path(str(cfg["cache_dir"])).expanduser() if cfg.get("cache_dir") else root / "cache"
    for d in (first, Path("data") / "cache"):
        if writable(d):
            remove_stale_temps(d)
            return d
    return None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's full content (read in 4 MiB chunks; never memoized)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def cache_key(values: Mapping[str, Any], files: Sequence[Path]) -> str:
    """SHA-256 over the raw files' content digests and the data-shaping ``values``."""
    payload = {
        "version": CACHE_VERSION,
        "files": [[p.name, file_digest(p)] for p in files],
        "values": {k: values[k] for k in sorted(values)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _ids(a: np.ndarray) -> np.ndarray:
    """External ids in a pickle-free dtype: integers stay integers, strings (an object array of
    ``str``, as :meth:`Interactions.from_frame` keeps them) become a numpy str array, value for
    value (the sources refuse the NUL character, which a numpy str array would drop at the
    end of an id)."""
    return a if a.dtype.kind in "iuU" else a.astype(str)


def save(path: Path, split: Split, key: str, meta: Mapping[str, Any]) -> None:
    """Write ``split`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    arrays: dict[str, np.ndarray] = {
        "user_ids": _ids(split.train.user_ids),
        "item_ids": _ids(split.train.item_ids),
        "meta": np.array(json.dumps({"key": key, "name": split.name, **meta}, default=str)),
    }
    for part in PARTS + OPTIONAL_PARTS:
        inter: Interactions | None = getattr(split, part, None)
        if inter is None:
            continue
        arrays[f"{part}.user"] = inter.user
        arrays[f"{part}.item"] = inter.item
        if inter.time is not None:
            arrays[f"{part}.time"] = inter.time
        if inter.rating is not None:
            arrays[f"{part}.rating"] = inter.rating
    if split.cold_items is not None:  # data.split=cold_items: each item's part
        arrays["cold_items"] = split.cold_items
    for entity in ("item", "user"):  # attribute tables as plain arrays (FeatureTable.to_arrays)
        table: FeatureTable | None = getattr(split, f"{entity}_features", None)
        if table is not None:
            arrays.update(table.to_arrays(f"{entity}_features"))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: Path, key: str) -> tuple[Split, dict[str, Any]] | None:
    """The cached split and its metadata, or None when the file is absent, unreadable or was
    written for another key."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            if meta.get("key") != key:
                return None
            user_ids, item_ids = z["user_ids"], z["item_ids"]
            cold_items = z["cold_items"] if "cold_items" in z.files else None
            parts = {}
            for part in PARTS + OPTIONAL_PARTS:
                if f"{part}.user" not in z.files and part in OPTIONAL_PARTS:
                    continue
                parts[part] = Interactions(
                    user=z[f"{part}.user"],
                    item=z[f"{part}.item"],
                    time=z[f"{part}.time"] if f"{part}.time" in z.files else None,
                    rating=z[f"{part}.rating"] if f"{part}.rating" in z.files else None,
                    user_ids=user_ids,
                    item_ids=item_ids,
                )
            features = {
                f"{e}_features": FeatureTable.from_arrays(z, f"{e}_features", e)
                for e in ("item", "user")
            }
    except Exception:  # truncated, bad CRC, not a zip, missing member: rebuild
        return None
    split = Split(
        **parts,
        name=str(meta.get("name", "")),
        audit=meta.get("audit"),
        cold_items=cold_items,
        **features,
    )
    return split, meta
