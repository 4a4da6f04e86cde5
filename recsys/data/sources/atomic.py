"""RecBole atomic files: ``<name>.inter`` with a typed header."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from recsys.data.sources.files import (
    ROLES,
    dataset_dir,
    finish_log,
    read_delimited,
    rows_in_time_order,
)
from recsys.errors import ConfigError, DataError

_ATOMIC_TYPES = ("token", "float", "token_seq", "float_seq")


def check_config(cfg: Mapping[str, Any]) -> None:
    """What the config alone decides: a dataset name, a separator, the user and item fields."""
    if not cfg.get("name") or str(cfg.get("name")) == "???":
        raise ConfigError("data.name must be set for this dataset (add data.name=...)")
    sep = cfg.get("sep")
    if sep is not None and (not isinstance(sep, str) or sep == "" or sep in ('"', "\n", "\r")):
        raise ConfigError(f"data.sep must be a field separator such as '\\t', got {sep!r}")
    fields = cfg.get("fields") or {}
    for role in ("user", "item"):
        if not fields.get(role):
            raise ConfigError(f"data.fields.{role}: the atomic source needs the {role} field")


def load_atomic(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """RecBole atomic ``<name>.inter``: tab-separated with a typed header such as
    ``user_id:token item_id:token rating:float timestamp:float``. ``data.fields`` maps roles to
    field names; ``rating`` and ``time`` are used when the header has them. Token ids are kept
    exactly as written (strings)."""
    check_config(cfg)
    path = dataset_dir(cfg) / str(cfg["files"][0])
    sep = str(cfg.get("sep") or "\t")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        first = f.readline()
    try:
        line = first.decode("utf-8").rstrip("\r\n").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise DataError(f"{path}: line 1 (the header) is not valid UTF-8 text") from None
    header = [h.strip() for h in line.split(sep)]
    typed = {}
    for h in header:
        name, colon, kind = h.partition(":")
        if not colon or kind not in _ATOMIC_TYPES:
            raise DataError(
                f"{path}: line 1: header field {h[:60]!r} is not '<name>:<type>' with type one "
                f"of {', '.join(_ATOMIC_TYPES)}"
            )
        typed[name] = (h, kind)
    fields = dict(cfg.get("fields") or {})
    cols: dict[str, str | None] = {}
    for role in ROLES:
        name = fields.get(role)
        if name is None:
            continue
        if name not in typed:
            if role in ("user", "item"):
                raise DataError(
                    f"{path}: missing field {name!r} ({role}, data.fields.{role}); the header "
                    f"has: {', '.join(header)}"
                )
            continue
        full, kind = typed[name]
        if role in ("time", "rating") and kind != "float":
            raise DataError(f"{path}: field {full!r} ({role}) must have type float")
        if role in ("user", "item") and kind != "token":
            raise DataError(f"{path}: field {full!r} ({role}) must have type token")
        cols[role] = full
    frame = read_delimited(path, sep=sep, header=True, columns=cols, id_type="str")
    return finish_log(rows_in_time_order(frame, cfg, path), path)
