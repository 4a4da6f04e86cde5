"""MovieLens: ml-100k ``u.data``, ml-1m ``ratings.dat`` (or ``ratings.parquet``) and the
``ratings.csv`` of ml-20m, ml-25m and ml-latest(-small)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from recsys.data.sources.files import dataset_dir, finish_log, notice, read_delimited, read_parquet
from recsys.errors import DataError


def load_ml100k(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens-100K ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    path = dataset_dir(cfg) / "u.data"
    names = ["user_id", "item_id", "rating", "timestamp"]
    cols = dict(zip(("user", "item", "rating", "time"), names, strict=True))
    return finish_log(read_delimited(path, sep="\t", header=False, names=names, columns=cols), path)


def load_ml1m(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens-1M: official ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), or, when
    only ``ratings.parquet`` (string ``userID, movieID``) is present, implicit pairs without
    ratings or times. On the pairs, time-based splits and rating thresholds are refused."""
    folder = dataset_dir(cfg)
    dat = folder / "ratings.dat"
    if dat.is_file():
        names = ["UserID", "MovieID", "Rating", "Timestamp"]
        cols = dict(zip(("user", "item", "rating", "time"), names, strict=True))
        return finish_log(
            read_delimited(dat, sep="::", header=False, names=names, columns=cols), dat
        )
    path = folder / "ratings.parquet"
    split = str(cfg.get("split", "random"))
    needs = []
    if split in ("leave_one_out", "temporal"):
        needs.append(f"data.split={split} needs timestamps")
    if cfg.get("rating_threshold") is not None:
        needs.append(f"data.rating_threshold={cfg.get('rating_threshold')} needs ratings")
    if needs:
        raise DataError(
            f"ml-1m: only {path} is present, which holds (user, movie) pairs without ratings or "
            f"timestamps; {' and '.join(needs)}: use data.split=random and "
            f"data.rating_threshold=null, or put the official ratings.dat in {folder}/"
        )
    notice(f"ml-1m: using {path}: implicit (user, movie) pairs, no ratings or timestamps", True)
    frame = read_parquet(path, {"user": "userID", "item": "movieID"}, id_type="int")
    return finish_log(frame, path)


def load_movielens_csv(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """MovieLens ``ratings.csv`` (ml-20m, ml-25m, ml-latest, ml-latest-small): header
    ``userId,movieId,rating,timestamp``."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    cols = {"user": "userId", "item": "movieId", "rating": "rating", "time": "timestamp"}
    return finish_log(read_delimited(path, sep=",", header=True, columns=cols), path)
