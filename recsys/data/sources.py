"""Raw formats → a frame of external ids (``user, item`` + optional ``time, rating``).

Each source is a function ``(data config) -> DataFrame`` named by ``data.source``. Files are found
under ``<data.root>/<data.folder>/``; parsing is vectorized (pandas / pyarrow).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.errors import DataError


def dataset_dir(cfg: Mapping[str, Any]) -> Path:
    """``<root>/<folder>``, or a clear error naming the expected files and directory."""
    root = Path(str(cfg.get("root") or "data")).expanduser()
    folder = root / str(cfg.get("folder", cfg.get("name", "")))
    files = list(cfg.get("files") or [])
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and not _alternative_present(cfg, folder):
        raise DataError(
            f"dataset {cfg.get('name')!r}: missing {', '.join(missing)} in {folder} "
            f"(set data.root or RECSYS_DATA_DIR to the folder that holds {folder.name}/)"
        )
    return folder


def _alternative_present(cfg: Mapping[str, Any], folder: Path) -> bool:
    return any((folder / f).is_file() for f in cfg.get("alternative_files") or [])


def load_ml100k(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    path = dataset_dir(cfg) / "u.data"
    df = pd.read_csv(
        path, sep="\t", header=None, names=["user", "item", "rating", "time"], engine="c"
    )
    return df[["user", "item", "time", "rating"]]


def load_ml1m(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens-1M: official ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), or, when
    only ``ratings.parquet`` (string ``userID, movieID``) is present, implicit pairs without
    ratings or times."""
    folder = dataset_dir(cfg)
    dat = folder / "ratings.dat"
    if dat.is_file():
        raw = pd.read_csv(dat, sep="::", header=None, engine="python", names=["user", "item", "rating", "time"])
        return raw[["user", "item", "time", "rating"]]
    table = pd.read_parquet(folder / "ratings.parquet")
    print(f"ml-1m: only {folder / 'ratings.parquet'} found: implicit pairs without ratings or timestamps")
    return pd.DataFrame(
        {
            "user": table["userID"].astype(np.int64).to_numpy(),
            "item": table["movieID"].astype(np.int64).to_numpy(),
        }
    )


def load_user_sequences(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """One line per user, ``user item item ...`` in time order (S3-Rec / ICLRec format). The
    position in the line becomes the ``time`` column."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    lines = pd.read_csv(path, header=None, names=["line"], dtype=str)["line"].str.split()
    lengths = lines.str.len().to_numpy()
    tokens = np.concatenate(lines.to_numpy())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    is_user = np.zeros(len(tokens), dtype=bool)
    is_user[starts] = True
    user = np.repeat(tokens[starts], lengths)[~is_user].astype(np.int64)
    item = tokens[~is_user].astype(np.int64)
    pos = np.arange(len(tokens)) - np.repeat(starts, lengths)
    return pd.DataFrame({"user": user, "item": item, "time": pos[~is_user].astype(np.float64)})
