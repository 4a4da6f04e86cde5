"""A user's own log: CSV, TSV or Parquet with a column mapping (``data.columns``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from recsys.data.sources.files import (
    ROLES,
    finish_log,
    log_path,
    read_delimited,
    read_parquet,
    rows_in_time_order,
)
from recsys.errors import DataError


def load_csv(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """A user's own log: CSV, TSV or Parquet (``data.path``, absolute or under the data root),
    with ``data.columns`` mapping ``user, item`` and the optional ``time, rating`` to column names
    (or 0-based positions when ``data.header`` is false)."""
    if not cfg.get("path"):
        raise DataError("data.path: the csv source needs the path of the log file")
    path = log_path(cfg)
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.path)")
    mapping = dict(cfg.get("columns") or {})
    for role in ("user", "item"):
        if mapping.get(role) is None:
            raise DataError(f"data.columns.{role}: the csv source needs the {role} column")
    unknown = set(mapping) - set(ROLES)
    if unknown:
        raise DataError(f"data.columns: unknown role(s) {', '.join(sorted(unknown))}; use {ROLES}")
    fmt = str(cfg.get("format") or "auto")
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {".parquet": "parquet", ".pq": "parquet", ".tsv": "tsv", ".tab": "tsv"}.get(
            suffix, "csv"
        )
    id_type = str(cfg.get("id_type") or "auto")
    if fmt == "parquet":
        frame = read_parquet(path, mapping, int_ids=id_type == "int")
        return finish_log(rows_in_time_order(frame, cfg, path), path)
    sep = cfg.get("sep") or ("\t" if fmt == "tsv" else ",")
    header = bool(cfg.get("header", True))
    names = None
    if not header:
        positions = [v for v in mapping.values() if v is not None]
        if not all(isinstance(v, int) for v in positions):
            raise DataError("data.columns: without a header, map roles to 0-based column positions")
        with open(path, encoding="utf-8", errors="replace") as f:
            width = len(f.readline().rstrip("\r\n").split(str(sep)))
        names = [str(i) for i in range(width)]
        for role, v in mapping.items():
            if v is not None and v >= width:
                raise DataError(f"{path}: missing column {v} ({role}); line 1 has {width} fields")
        mapping = {r: (None if v is None else str(v)) for r, v in mapping.items()}
    frame = read_delimited(
        path,
        sep=str(sep),
        header=header,
        names=names,
        columns=mapping,
        int_ids=id_type == "int",
        id_as_string=id_type == "str",
    )
    return finish_log(rows_in_time_order(frame, cfg, path), path)
