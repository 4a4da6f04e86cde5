"""Side files of the catalog datasets: user attributes and item titles.

Found next to the interaction files (``<data.root>/<data.folder>/``) by their published names:

- user attributes: MovieLens-100K ``u.user`` (id|age|gender|occupation|zip) and MovieLens-1M
  ``users.dat`` (id::gender::age code::occupation code::zip), returned with readable labels:
  ``gender``, ``age`` (ML-1M's bands, ML-100K's ages put in the same bands) and ``occupation``;
- item titles: MovieLens ``u.item`` / ``movies.dat`` / ``movies.csv`` and Last.fm ``artists.dat``.

Both return None when the dataset has no such file; zip codes are never read.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

# the user attribute files are read (and their labels kept) by recsys.data.sources.features;
# AGE_BANDS and ML1M_OCCUPATIONS stay importable from here
from recsys.data.sources.features import (  # noqa: F401
    AGE_BANDS,
    ML1M_OCCUPATIONS,
    read_movielens_users,
)

USER_ATTRIBUTES = ("gender", "age", "occupation")


def _folder(cfg: Mapping[str, Any]) -> Path:
    from recsys.data.sources import data_root

    return data_root(cfg) / str(cfg.get("folder") or cfg.get("name", ""))


def _read(path: Path, sep: str, names: list[str], usecols: list[int]) -> pd.DataFrame:
    text = path.read_bytes().decode("latin-1")
    if len(sep) > 1:
        text = text.replace(sep, "\x1f")
        sep = "\x1f"
    return pd.read_csv(
        io.StringIO(text), sep=sep, header=None, usecols=usecols, names=names, dtype=str,
        quoting=3, engine="c",
    )  # fmt: skip


def user_attributes(cfg: Mapping[str, Any]) -> pd.DataFrame | None:
    """``user`` (external id as text) plus ``gender, age, occupation`` (labels), read by
    :func:`~recsys.data.sources.features.read_movielens_users`."""
    folder = _folder(cfg)
    path = next((folder / n for n in ("u.user", "users.dat") if (folder / n).is_file()), None)
    if path is None:
        return None
    raw = read_movielens_users(path)
    df = pd.DataFrame({"user": raw.ids.astype(str)})
    cat = raw.categorical
    for name in USER_ATTRIBUTES:
        part = cat[cat["field"] == name]
        col = pd.Series([None] * len(df), dtype=object)
        col.iloc[part["row"].to_numpy()] = part["value"].to_numpy()
        df[name] = col
    return df


def item_titles(cfg: Mapping[str, Any]) -> dict[str, str] | None:
    """External item id (as a string) → title, or None when the dataset has no metadata file."""
    folder = _folder(cfg)
    if (folder / "u.item").is_file():
        df = _read(folder / "u.item", "|", ["item", "title"], [0, 1])
    elif (folder / "movies.dat").is_file():
        df = _read(folder / "movies.dat", "::", ["item", "title"], [0, 1])
    elif (folder / "movies.csv").is_file():
        df = pd.read_csv(folder / "movies.csv", usecols=["movieId", "title"], dtype=str)
        df.columns = ["item", "title"]
    elif (folder / "artists.dat").is_file():
        df = pd.read_csv(
            folder / "artists.dat", sep="\t", usecols=["id", "name"], dtype=str, quoting=3
        )
        df.columns = ["item", "title"]
    else:
        return None
    return dict(zip(df["item"].str.strip(), df["title"].fillna(""), strict=False))
