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

import numpy as np
import pandas as pd

AGE_BANDS = (
    (1, "<18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-49"),
    (50, "50-55"),
    (56, "56+"),
)
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
USER_ATTRIBUTES = ("gender", "age", "occupation")


def _folder(cfg: Mapping[str, Any]) -> Path:
    from recsys.data.sources import data_root

    return data_root(cfg) / str(cfg.get("folder") or cfg.get("name", ""))


def _age_band(age: np.ndarray) -> np.ndarray:
    starts = np.array([s for s, _ in AGE_BANDS])
    labels = np.array([lab for _, lab in AGE_BANDS], dtype=object)
    return labels[np.clip(np.searchsorted(starts, age, side="right") - 1, 0, len(labels) - 1)]


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
    """``user`` (external id, as in the interaction log) plus ``gender, age, occupation``."""
    folder = _folder(cfg)
    if (folder / "u.user").is_file():
        df = _read(folder / "u.user", "|", ["user", "age", "gender", "occupation"], [0, 1, 2, 3])
        df["age"] = _age_band(df["age"].astype(int).to_numpy())
    elif (folder / "users.dat").is_file():
        df = _read(
            folder / "users.dat", "::", ["user", "gender", "age", "occupation"], [0, 1, 2, 3]
        )
        df["age"] = _age_band(df["age"].astype(int).to_numpy())
        occ = df["occupation"].astype(int).to_numpy()
        df["occupation"] = np.asarray(ML1M_OCCUPATIONS, dtype=object)[occ]
    else:
        return None
    df["user"] = df["user"].str.strip()
    return df[["user", *USER_ATTRIBUTES]]


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
