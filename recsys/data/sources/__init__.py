"""Raw formats → a frame of external ids (``user, item`` + optional ``time, rating``).

Each loader is a function ``(data config) -> DataFrame`` named by ``data.source`` as a dotted
path. One module per format:

====================  ==============================  ============================================
module                loader                          reads
====================  ==============================  ============================================
:mod:`.movielens`     :func:`load_ml100k`             ml-100k ``u.data`` (tab-separated, no header)
:mod:`.movielens`     :func:`load_ml1m`               ml-1m ``ratings.dat`` (``::``), else
                                                      ``ratings.parquet`` (implicit pairs)
:mod:`.movielens`     :func:`load_movielens_csv`      ``ratings.csv`` of ml-20m, ml-25m, ml-latest
:mod:`.lastfm`        :func:`load_lastfm`             Last.fm hetrec2011 ``user_artists.dat``
:mod:`.sequences`     :func:`load_user_sequences`     one line per user (S3-Rec: Amazon, Yelp)
:mod:`.atomic`        :func:`load_atomic`             RecBole atomic ``.inter`` files
:mod:`.tabular`       :func:`load_csv`                a user's own CSV / TSV / Parquet log with
                                                      a column mapping (``data.columns``)
====================  ==============================  ============================================

:mod:`.files` holds what they share: where files live (:func:`data_root`, :func:`dataset_dir`,
:func:`raw_files`, downloads through :mod:`recsys.data.download`), the checked readers
(:func:`read_delimited`, :func:`read_parquet`: a bad line is a one-line
:class:`~recsys.errors.DataError` naming file, line and column; ids are kept as written or
checked as exact integers, never passed through a float), and :func:`notice`.

Configs written before the loaders moved into these modules name them
``recsys.data.sources.<loader>``: those names still import, and :func:`hashed_name` makes both
names of a loader give the same data fingerprint and cache key.

A new format is one module here with a ``load_<format>(cfg)`` function and a
``configs/data/<name>.yaml`` whose ``source`` names it; what its config alone decides (a key it
needs, a value it refuses) goes in the module's ``check_config(cfg)``, listed in ``_CHECKS``, so
:func:`check_config` refuses it before any file is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

# Re-exported: checkpoints from before the split store data.source as recsys.data.sources.<loader>
from recsys.data.sources import atomic, tabular
from recsys.data.sources.atomic import load_atomic
from recsys.data.sources.files import (
    NOTICES,
    ROLES,
    data_root,
    dataset_dir,
    is_int_id,
    notice,
    raw_files,
    read_delimited,
    read_parquet,
    rows_in_time_order,
)
from recsys.data.sources.lastfm import load_lastfm
from recsys.data.sources.movielens import load_ml1m, load_ml100k, load_movielens_csv
from recsys.data.sources.sequences import load_user_sequences, parse_user_sequences
from recsys.data.sources.tabular import load_csv

_LOADERS = {
    fn.__name__: fn
    for fn in (
        load_ml100k,
        load_ml1m,
        load_movielens_csv,
        load_lastfm,
        load_user_sequences,
        load_atomic,
        load_csv,
    )
}

# config-only checks of the loaders that have some
_CHECKS = {"load_csv": tabular.check_config, "load_atomic": atomic.check_config}


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse a data config that cannot work, decided by the config alone (before any file is
    read): a format's own checks (``data=csv`` without ``data.path``, ``data=atomic`` without
    ``data.name``, an unknown ``data.id_type``, ...). One :class:`~recsys.errors.ConfigError`
    line naming the key."""
    source = cfg.get("source")
    if not isinstance(source, str):
        return
    name = hashed_name(source)
    check = _CHECKS.get(name.rpartition(".")[2]) if name.startswith(__name__ + ".") else None
    if check is not None:
        check(cfg)


def hashed_name(source: str) -> str:
    """The name under which the data fingerprint and the cache key hash ``data.source``.

    A loader of this package hashes as ``recsys.data.sources.<loader>``, the name configs used
    before the loaders moved into one module per format, whichever of its names the config
    gives: runs and cached splits made before the move keep their fingerprints and cache keys,
    and ``recsys-compare`` still compares them with new runs. Any other path is returned as is.
    """
    module, _, name = source.rpartition(".")
    if not module.startswith(__name__ + ".") or name not in _LOADERS:
        return source
    try:
        fn = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return source  # resolve_source reports it
    return f"{__name__}.{name}" if fn is _LOADERS[name] else source


__all__ = [
    "check_config",
    "NOTICES",
    "ROLES",
    "data_root",
    "dataset_dir",
    "hashed_name",
    "load_atomic",
    "load_csv",
    "load_lastfm",
    "load_ml1m",
    "load_ml100k",
    "load_movielens_csv",
    "load_user_sequences",
    "is_int_id",
    "notice",
    "parse_user_sequences",
    "raw_files",
    "read_delimited",
    "read_parquet",
    "rows_in_time_order",
]
