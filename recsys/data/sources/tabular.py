"""A user's own log: CSV, TSV or Parquet with a column mapping (``data.columns``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from recsys.data.sources.files import (
    ID_TYPES,
    ROLES,
    finish_log,
    log_path,
    read_delimited,
    read_parquet,
    rows_in_time_order,
)
from recsys.errors import ConfigError, DataError

FORMATS = ("auto", "csv", "tsv", "parquet")
_HINT = "; data.id_type=str keeps ids exactly as written"


def check_config(cfg: Mapping[str, Any]) -> None:
    """What the config alone decides, checked before any file is read: the path, the column
    mapping, the format, the separator and the id type. One line naming the key."""
    path = cfg.get("path")
    if path is None or str(path) in ("", "???"):
        raise ConfigError("data.path must be set for this dataset (add data.path=...)")
    mapping = dict(cfg.get("columns") or {})
    unknown = set(mapping) - set(ROLES)
    if unknown:
        raise ConfigError(
            f"data.columns: unknown role(s) {', '.join(sorted(unknown))}; use {', '.join(ROLES)}"
        )
    for role in ("user", "item"):
        if mapping.get(role) is None:
            raise ConfigError(f"data.columns.{role}: the csv source needs the {role} column")
    used = [(r, v) for r, v in mapping.items() if v is not None]
    for i, (role, v) in enumerate(used):
        for other, w in used[:i]:
            if str(v) == str(w):
                raise ConfigError(
                    f"data.columns.{role}: column {v!r} is already data.columns.{other}"
                )
    fmt = str(cfg.get("format") or "auto")
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    id_type = cfg.get("id_type", "str")
    if id_type == "auto":
        raise ConfigError(
            "data.id_type=auto is no longer accepted: it could rewrite ids (one 3.5 turned every "
            "id into a float); use str (ids exactly as written, the default) or int "
            "(non-negative integers, checked exactly)"
        )
    if id_type not in ID_TYPES:
        raise ConfigError(f"data.id_type must be one of {', '.join(ID_TYPES)}, got {id_type!r}")
    sep = cfg.get("sep")
    if sep is not None and (not isinstance(sep, str) or sep == "" or sep in ('"', "\n", "\r")):
        raise ConfigError(f"data.sep must be a field separator such as ',' or '\\t', got {sep!r}")
    if not isinstance(cfg.get("header", True), bool):
        raise ConfigError(f"data.header must be true or false, got {cfg.get('header')!r}")
    if not cfg.get("header", True) and not all(isinstance(v, int) for _, v in used):
        raise ConfigError("data.columns: without a header, map roles to 0-based column positions")


def load_csv(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """A user's own log: CSV, TSV or Parquet (``data.path``, absolute or under the data root),
    with ``data.columns`` mapping ``user, item`` and the optional ``time, rating`` to column names
    (or 0-based positions when ``data.header`` is false).

    Ids are read as ``data.id_type`` says: ``str`` (the default) keeps each id's text exactly
    as written; ``int`` declares non-negative integers, checked exactly. A float id column in
    Parquet is refused (see :func:`~recsys.data.sources.files.read_parquet`).
    """
    check_config(cfg)
    path = log_path(cfg)
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.path)")
    mapping = {r: v for r, v in dict(cfg.get("columns") or {}).items() if v is not None}
    fmt = str(cfg.get("format") or "auto")
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {".parquet": "parquet", ".pq": "parquet", ".tsv": "tsv", ".tab": "tsv"}.get(
            suffix, "csv"
        )
    id_type = str(cfg.get("id_type", "str"))
    if fmt == "parquet":
        frame = read_parquet(path, mapping, id_type=id_type, hint=_HINT)
        return finish_log(rows_in_time_order(frame, cfg, path), path)
    sep = cfg.get("sep") or ("\t" if fmt == "tsv" else ",")
    header = bool(cfg.get("header", True))
    frame = read_delimited(
        path,
        sep=str(sep),
        header=header,
        columns={r: str(v) for r, v in mapping.items()},
        id_type=id_type,
        hint=_HINT,
    )
    return finish_log(rows_in_time_order(frame, cfg, path), path)
