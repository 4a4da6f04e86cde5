"""The typed containers every dataset passes through.

``Interactions`` is a columnar log of (user, item) events whose ids are contiguous integers, with
the external ids kept so they come back out at export. ``Split`` is three such logs over the same
id space. ``CSR`` is the per-user view (a user's items in time order) used for masking, model
inputs and batching. Everything here is numpy; tensors are made where batches are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys.errors import DataError

if TYPE_CHECKING:
    from recsys.data.features import FeatureTable


@dataclass(frozen=True)
class CSR:
    """Rows of item ids per user, each row in time order.

    ``indices[indptr[u]:indptr[u + 1]]`` are user ``u``'s items, oldest first.
    """

    indptr: np.ndarray  # (n_users + 1,) int64
    indices: np.ndarray  # (nnz,) int64
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def counts(self) -> np.ndarray:
        """(n_rows,) int64: number of items per row."""
        return np.diff(self.indptr)

    def row(self, u: int) -> np.ndarray:
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def take_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of ``rows``' entries: (row position in ``rows``, item), row-major.

        Vectorized: no Python loop over rows.
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        counts = ends - starts
        pos = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        # offset of each entry inside its row, then the global index into ``indices``
        within = np.arange(counts.sum(), dtype=np.int64) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        return pos, self.indices[np.repeat(starts, counts) + within]


def encode_ids(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)`` with the inverse as flat int64: the sorted distinct
    external ids and each event's internal id.

    Non-negative integer ids whose largest value is at most a few times the number of events
    (the usual case: MovieLens, synthetic and scale logs) are encoded with a presence table and
    a lookup instead of a sort: the same result, without the sort's copies of the column.
    String ids (an object array of ``str``) are factorized by hashing and only the distinct ids
    are sorted: the same result as ``np.unique``, without its comparison sort over every event.

    Raises:
        DataError: float ids (their text, ``12.0`` or ``1e+20``, is not an id anyone wrote, and
            two large ones can be equal as floats), or ids mixing strings with other values.
    """
    x = np.asarray(x).ravel()
    if x.dtype.kind == "f":
        raise DataError(
            "ids are floating-point numbers; a source must give integer or string ids (a float "
            "id is rewritten when printed, and two large ones can collide)"
        )
    if x.dtype.kind == "O" and len(x):
        codes, uniques = pd.factorize(x)
        if not all(isinstance(v, str) for v in uniques):
            kinds = sorted({type(v).__name__ for v in uniques})
            raise DataError(f"ids must be all integers or all strings, got {', '.join(kinds)}")
        order = np.argsort(uniques.astype(object), kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order), dtype=np.int64)
        return np.asarray(uniques, dtype=object)[order], rank[codes]
    if x.dtype.kind in "iu" and len(x):
        lo, hi = int(x.min()), int(x.max())
        if lo >= 0 and hi < 4 * len(x) + 1_000_000:
            present = np.zeros(hi + 1, dtype=bool)
            present[x] = True
            ids = np.flatnonzero(present)
            del present
            lookup = np.zeros(hi + 1, dtype=np.int64)
            lookup[ids] = np.arange(len(ids), dtype=np.int64)
            return ids.astype(x.dtype, copy=False), lookup[x]
    ids, inverse = np.unique(x, return_inverse=True)
    return ids, inverse.astype(np.int64, copy=False).ravel()


@dataclass(frozen=True)
class Interactions:
    """An interaction log with contiguous ids.

    Attributes:
        user, item: (n,) int64 internal ids in ``[0, n_users)`` and ``[0, n_items)``.
        time: (n,) float64 order key (a timestamp, or the position in a user's sequence), or None
            for logs without any order.
        rating: (n,) float32 explicit values (ratings, play counts), or None.
        user_ids, item_ids: external id of each internal id; shared by all parts of a split.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None
    rating: np.ndarray | None
    user_ids: np.ndarray = field(repr=False)
    item_ids: np.ndarray = field(repr=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> Interactions:
        """Encode a frame with columns ``user, item`` (+ optional ``time, rating``) of external ids.

        Internal ids follow the sorted order of the external ids, so the mapping is deterministic.
        """
        user_ids, user = encode_ids(df["user"].to_numpy())
        item_ids, item = encode_ids(df["item"].to_numpy())
        time = df["time"].to_numpy(np.float64) if "time" in df else None
        rating = df["rating"].to_numpy(np.float32) if "rating" in df else None
        return cls(
            user=user,
            item=item,
            time=time,
            rating=rating,
            user_ids=user_ids,
            item_ids=item_ids,
        )

    def select(self, index: np.ndarray) -> Interactions:
        """The events at ``index`` (a boolean mask or integer positions), same id space."""
        return Interactions(
            user=self.user[index],
            item=self.item[index],
            time=None if self.time is None else self.time[index],
            rating=None if self.rating is None else self.rating[index],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
        )

    def concat(self, other: Interactions) -> Interactions:
        """This log followed by ``other`` (same id space)."""

        def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else np.concatenate([a, b])

        return Interactions(
            user=np.concatenate([self.user, other.user]),
            item=np.concatenate([self.item, other.item]),
            time=cat(self.time, other.time),
            rating=cat(self.rating, other.rating),
            user_ids=self.user_ids,
            item_ids=self.item_ids,
        )

    def order(self) -> np.ndarray:
        """Stable permutation sorting events by (user, time, position in the log)."""
        if self.time is None:
            return np.argsort(self.user, kind="stable")
        return np.lexsort((self.time, self.user))  # lexsort is stable; last key is primary

    def to_csr(self) -> CSR:
        """Per-user item rows in time order."""
        perm = self.order()
        counts = np.bincount(self.user, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return CSR(indptr=indptr, indices=self.item[perm].astype(np.int64), n_cols=self.n_items)

    def item_counts(self) -> np.ndarray:
        """(n_items,) int64 number of events per item."""
        return np.bincount(self.item, minlength=self.n_items)


@dataclass(frozen=True)
class Split:
    """Train, validation and test logs over one id space; the parts never share an event.

    ``val_input`` / ``test_input`` are set by splits whose evaluated users are not training
    users (strong generalization, ``holdout_users``): the events fed to the model as those
    users' history at that stage (their fold-in part), while ``val`` / ``test`` hold the
    targets. When None, the history is the training log (plus validation at test time).
    """

    train: Interactions
    val: Interactions
    test: Interactions
    name: str = ""
    val_input: Interactions | None = None
    test_input: Interactions | None = None
    # leakage audit of the split (recsys.data.audit.audit_split), set by the data pipeline
    audit: dict | None = field(default=None, compare=False, repr=False)
    # attributes of every item / user of the id space (recsys.data.features), vocabularies and
    # normalisation from ``train`` only; None when the dataset has no feature file
    item_features: FeatureTable | None = field(default=None, compare=False, repr=False)
    user_features: FeatureTable | None = field(default=None, compare=False, repr=False)
    # cold-start items (data.split=cold_items): (n_items,) int8, 0 warm, 1 validation-cold,
    # 2 test-cold; every event of a cold item is in val (1) or test (2), none in train
    cold_items: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items


def has_clock(inter: Interactions) -> bool:
    """Whether ``time`` is a clock shared by all users, not each user's position in a sequence
    (sources of one-line-per-user sequences store the position 0, 1, 2, ...)."""
    if inter.time is None or len(inter) == 0:
        return False
    order = inter.order()
    u, t = inter.user[order], inter.time[order]
    first = np.r_[True, u[1:] != u[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(u)), 0))
    rank = np.arange(len(u)) - start
    return not (np.array_equal(t, rank) or np.array_equal(t, rank + 1))


def event_index(inter: Interactions) -> np.ndarray:
    """(n,) int64: each event's position in the global event order of the log: by time, ties by
    internal user id, then by position in ``inter`` (deterministic)."""
    n = len(inter)
    order = np.lexsort((np.arange(n), inter.user, inter.time))
    index = np.empty(n, dtype=np.int64)
    index[order] = np.arange(n, dtype=np.int64)
    return index
