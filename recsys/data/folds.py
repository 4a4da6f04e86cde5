"""Official predefined splits: MovieLens-100K's five cross-validation folds.

``u{k}.base`` / ``u{k}.test`` (k = 1..5) partition ``u.data`` into five disjoint 20 % test sets
(the GroupLens ``mku.sh`` folds used by scikit-surprise's published ML-100K table). Here
``u{k}.test`` is the test part, and the validation part is carved from ``u{k}.base`` with the
per-user random split (``data.val_ratio`` of each user's base ratings, seeded by
``data.split_seed``, 0 when null: a source does not see the run's seed), so model selection and early stopping never see the
test fold.

:func:`load_ml100k_fold` is a data source that returns a ready :class:`Split` (the pipeline
passes it through instead of splitting again); the standard preprocessing steps of the data
config still apply, to base and test alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.interactions import Interactions, Split
from recsys.data.preprocess import preprocess_config
from recsys.data.sources import dataset_dir, read_delimited
from recsys.data.splits import random_split
from recsys.errors import ConfigError

FOLDS = (1, 2, 3, 4, 5)


def _read(path) -> pd.DataFrame:
    """``user item rating time``, tab-separated, as ``u.data``: integer ids checked exactly, a
    damaged line refused by number (:func:`~recsys.data.sources.read_delimited`)."""
    names = ["user", "item", "rating", "time"]
    cols = {n: n for n in names}
    return read_delimited(path, sep="\t", header=False, names=names, columns=cols)


def load_ml100k_fold(cfg: Mapping[str, Any]) -> Split:
    """Fold ``data.fold`` of ML-100K: train + validation from ``u{k}.base``, test ``u{k}.test``.

    Ids are encoded over base and test together (a test item absent from base keeps an id the
    model never trained on, as in the official protocol).
    """
    fold = cfg.get("fold")
    if fold not in FOLDS:
        raise ConfigError(f"data.fold must be one of 1, 2, 3, 4, 5, got {fold!r}")
    folder = dataset_dir(cfg)
    base = _read(folder / f"u{fold}.base").assign(part=0)
    test = _read(folder / f"u{fold}.test").assign(part=1)
    df = preprocess_config(
        pd.concat([base, test], ignore_index=True)[["user", "item", "time", "rating", "part"]],
        cfg,
        source=str(cfg.get("name", "ml-100k-fold")),
    )
    part = df["part"].to_numpy()
    inter = Interactions.from_frame(df.drop(columns="part"))
    split_seed = cfg.get("split_seed")
    seed = int(split_seed if split_seed is not None else 0)
    inner = random_split(inter.select(part == 0), float(cfg.get("val_ratio", 0.1)), 0.0, seed)
    return Split(
        train=inner.train,
        val=inner.val,
        test=inter.select(np.flatnonzero(part == 1)),
        name=f"ml-100k-u{fold}",
    )
