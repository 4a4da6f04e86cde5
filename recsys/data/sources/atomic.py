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
from recsys.errors import DataError

_ATOMIC_TYPES = ("token", "float", "token_seq", "float_seq")


def load_atomic(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """RecBole atomic ``<name>.inter``: tab-separated with a typed header such as
    ``user_id:token item_id:token rating:float timestamp:float``. ``data.fields`` maps roles to
    field names; ``rating`` and ``time`` are used when the header has them."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    sep = str(cfg.get("sep") or "\t")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.strip() for h in f.readline().rstrip("\r\n").lstrip("\ufeff").split(sep)]
    typed = {}
    for h in header:
        name, colon, kind = h.partition(":")
        if not colon or kind not in _ATOMIC_TYPES:
            raise DataError(
                f"{path}: line 1: header field {h!r} is not '<name>:<type>' with type one of "
                f"{', '.join(_ATOMIC_TYPES)}"
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
        cols[role] = full
    frame = read_delimited(
        path, sep=sep, header=True, columns=cols, int_ids=False, id_as_string=True
    )
    return finish_log(rows_in_time_order(frame, cfg, path), path)
