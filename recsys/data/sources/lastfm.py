"""Last.fm (hetrec2011) ``user_artists.dat``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from recsys.data.sources.files import dataset_dir, finish_log, read_delimited


def load_lastfm(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Last.fm hetrec2011 ``user_artists.dat``: tab-separated ``userID artistID weight`` with a
    header; the play count becomes ``rating``; there are no timestamps."""
    path = dataset_dir(cfg) / str(cfg["files"][0])
    cols = {"user": "userID", "item": "artistID", "rating": "weight"}
    return finish_log(read_delimited(path, sep="\t", header=True, columns=cols), path)
