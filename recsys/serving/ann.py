"""Approximate maximum-inner-product search (MIPS) over a model's item vectors, for serving.

A dot-product model (MF, the sequence models) scores user ``u`` and item ``i`` as
``q_u · v_i``, so its top-k is a MIPS query over the (I, d) item table
(``LoadedRecommender._item_table``). :class:`InnerProductIndex` answers it approximately with a
faiss HNSW graph (``recsys-serve --ann hnsw``); :func:`exact_search` is the brute-force
reference and the serving default. Both return the same thing for the same candidates: the
exact float64 inner products of the returned items, highest first, ties by item index, with
each row's excluded (seen) items left out and rows short of ``k`` eligible items padded with
id -1 and score -inf.

faiss (``pip install -e '.[serve]'``) is imported where used, never at package import.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from recsys.errors import RecsysError

_INSTALL = "--ann hnsw needs faiss-cpu (pip install -e '.[serve]')"
# float64 elements multiplied at once when rescoring candidates (32 MiB): bounds memory
_CHUNK = 1 << 22


def require_faiss() -> Any:
    """The ``faiss`` module, or :class:`RecsysError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise RecsysError(_INSTALL) from None
    return faiss


@contextmanager
def _one_thread(faiss: Any) -> Iterator[None]:
    """faiss' OpenMP pool at one thread inside the block, the caller's setting restored after.

    Used for building only: HNSW insertion on several threads links vertices in an order that
    depends on timing, so two builds of the same vectors would give different graphs (and
    answers). faiss has no per-call thread setting, so this is process-wide while it lasts."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# -- validation ------------------------------------------------------------------------------
def _matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous (n, d) float32 array of finite numbers, else one line naming
    ``name``; ``dim``: the d it must have."""
    try:
        a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    except (TypeError, ValueError):
        raise RecsysError(f"{name}: must be a 2-D array of numbers (float32)") from None
    if a.ndim != 2:
        raise RecsysError(f"{name}: must be 2-D (rows, dim), got shape {a.shape}")
    if a.shape[1] < 1 or (dim is None and a.shape[0] < 1):
        raise RecsysError(f"{name}: must have at least one row and one column, got {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise RecsysError(f"{name}: must have {dim} columns (the items' dim), got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise RecsysError(f"{name}: must be finite (NaN or inf found, or too large for float32)")
    return a


def _positive_int(v: Any, name: str, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
        raise RecsysError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _exclusions(exclude: Sequence[Any] | None, n: int, num_items: int) -> tuple[np.ndarray, ...]:
    """Each row's excluded items as sorted unique keys ``row * num_items + item`` (int64) and
    the count per row (n,). ``exclude[i]``: internal item indices (None or empty: none)."""
    if exclude is None:
        return np.zeros(0, np.int64), np.zeros(n, np.int64)
    try:
        rows_given = len(exclude)
    except TypeError:
        rows_given = None
    if rows_given != n:
        raise RecsysError(
            f"exclude: must hold one array of item indices per query ({n}), got {rows_given}"
        )
    rows = []
    for i, e in enumerate(exclude):
        a = np.asarray([] if e is None else e)
        if a.size == 0:
            continue
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise RecsysError(f"exclude[{i}]: must be a 1-D array of integer item indices")
        if a.min() < 0 or a.max() >= num_items:
            raise RecsysError(f"exclude[{i}]: item indices must be in [0, {num_items})")
        rows.append(a.astype(np.int64) + i * num_items)
    keys = np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    return keys, np.bincount(keys // num_items, minlength=n).astype(np.int64)


def _excluded(keys: np.ndarray, rows: np.ndarray, ids: np.ndarray, num_items: int) -> np.ndarray:
    """(r, c) bool: whether ``ids`` (r, c) of queries ``rows`` (r,) are excluded (``keys``)."""
    if not len(keys):
        return np.zeros(ids.shape, bool)
    want = rows[:, None] * num_items + ids
    pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    return keys[pos] == want


# -- ranking shared by the exact and the approximate path -----------------------------------
def _rescore(items: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(r, c) float64 inner products of queries (r, d) with the items ``ids`` (r, c); -inf
    where an id is -1.

    The product of two float32 numbers is exact in float64, and the sum over d is numpy's
    pairwise sum along each contiguous row, whose order depends on d only: so a (query, item)
    pair gets the same bits whatever the other candidates. That is what makes the index's
    answer identical to :func:`exact_search` when its candidates hold the exact top-k (a BLAS
    matmul sums in an order that depends on the blocking)."""
    out = np.full(ids.shape, -np.inf)
    row, col = np.nonzero(ids >= 0)  # only real candidates: excluded ones are -1 by now
    step = max(1, _CHUNK // items.shape[1])
    for s in range(0, len(row), step):
        r, c = row[s : s + step], col[s : s + step]
        # (pairs, d) products, computed in float64 from the float32 operands
        out[r, c] = np.multiply(items[ids[r, c]], queries[r], dtype=float).sum(-1)
    return out


def _rank(
    items: np.ndarray, queries: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of candidate ids ``cand`` (r, c; -1: none) for queries (r, d): ids (r, k)
    and exact scores, by score descending then id ascending; short rows padded (-1, -inf)."""
    scores = _rescore(items, queries, cand)
    order = np.lexsort((cand, -scores), axis=-1)[:, :k]
    row = np.arange(len(cand))[:, None]
    ids, top = cand[row, order], scores[row, order]
    ids[~np.isfinite(top)] = -1
    if ids.shape[1] < k:  # fewer candidates than k
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids.astype(np.int64), top


def _exact(
    items: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the queries ``rows`` (indices into ``queries``), exclusions ``keys``."""
    num, d = items.shape
    items64 = items.astype(np.float64)
    # max |BLAS sum - pairwise sum| <= 2 * gamma_d * sum_j |q_j v_j| <= 2 d eps |q| max|v|:
    # items within twice that of the k-th best BLAS score may be the k-th by _rescore
    slack = 4.0 * (d + 2) * np.finfo(np.float64).eps * np.linalg.norm(items64, axis=1).max()
    ids = np.full((len(rows), k), -1, np.int64)
    scores = np.full((len(rows), k), -np.inf)
    kk = min(k, num)
    step = max(1, _CHUNK // num)
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        q = queries[r].astype(np.float64)
        blas = q @ items64.T  # (step, I)
        blas[_excluded(keys, r, np.broadcast_to(np.arange(num), blas.shape), num)] = -np.inf
        kth = np.partition(blas, num - kk, axis=1)[:, num - kk]
        tol = slack * np.linalg.norm(q, axis=1)
        near = np.isfinite(blas) & (blas >= (kth - tol)[:, None])
        count = near.sum(1)
        row, col = np.nonzero(near)  # row-major: each row's candidates in turn
        cand = np.full((len(r), max(1, int(count.max()))), -1, np.int64)
        cand[row, np.arange(len(col)) - np.repeat(np.cumsum(count) - count, count)] = col
        ids[s : s + step], scores[s : s + step] = _rank(items, queries[r], cand, k)
    return ids, scores


def exact_search(
    items: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` by inner product: the reference for :class:`InnerProductIndex`.

    items: (I, d), queries: (n, d) (float32-convertible); ``exclude[i]``: internal item indices
    to leave out for query i. Returns ids (n, k) int64 and scores (n, k) float64, the exact inner
    products, highest first, ties by item index; rows with fewer than ``k`` eligible items are
    padded with -1 and -inf. Candidates come from a float64 matmul, the scores and order from
    the same summation the index uses, so both give identical bits for the same items."""
    items = _matrix(items, "items")
    queries = _matrix(queries, "queries", items.shape[1])
    k = _positive_int(k, "k")
    keys, _ = _exclusions(exclude, len(queries), len(items))
    return _exact(items, queries, np.arange(len(queries)), k, keys)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of ``|approx ∩ exact| / |exact|``, counting only valid (>= 0) exact ids;
    rows without any valid exact id are left out (1.0 if no row has one).

    approx_ids, exact_ids: (n, k) item ids, -1 for padding, as the searches return them."""
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
        raise RecsysError(
            f"recall_at_k: approx_ids and exact_ids must be 2-D with the same rows, got "
            f"{a.shape} and {e.shape}"
        )
    valid = e >= 0
    # (n, k_exact, k_approx) comparison: k is small (tens), so this stays cheap
    hit = ((e[:, :, None] == a[:, None, :]) & (a[:, None, :] >= 0)).any(-1) & valid
    counted = valid.sum(1) > 0
    if not counted.any():
        return 1.0
    return float((hit.sum(1)[counted] / valid.sum(1)[counted]).mean())


class InnerProductIndex:
    """Approximate top-k by inner product over item vectors (faiss HNSW).

    items: (I, d) float32 item vectors, internal item index = row. ``m``: graph neighbours per
    vertex (HNSW's M; 2m at the base layer); ``ef_construction``: candidate list while
    building; ``ef_search``: candidate list while searching (higher: better recall, slower;
    settable after building).

    MIPS directly on a graph built with faiss' ``METRIC_INNER_PRODUCT`` (the ip-NSW approach of
    Morozov & Babenko, NeurIPS 2018), not by the reduction to nearest-neighbour search of
    Bachrach et al. (RecSys 2014: one extra coordinate ``sqrt(max_norm² - |v|²)`` on items, 0 on
    queries, an L2 graph). Why: on trained MF (BPR) embeddings of Last.fm and Amazon Beauty,
    seen items excluded, the inner-product graph had the higher recall@10 at every ef_search
    tried (32 to 256), far higher on Beauty, where the reduction stayed below 0.75. At equal
    ef_search its search costs more, but the reduction needs a larger ef_search for the same
    recall (Last.fm) or does not reach it (Beauty); both build in seconds
    (``benchmarks/scripts/ann_recall.py``; numbers in benchmarks/serving.md and
    ``benchmarks/logs/2026-12-07-serving/ann_recall.json``). A likely reason, also measured
    there: items of large norm win most MIPS queries, and the inner-product graph points two
    to three times the uniform share of its edges at the 1% of largest norm; the reduction's
    graph, with every item on one sphere, points fewer than the uniform share at them.

    :meth:`search` leaves each query's excluded items out by asking faiss for ``k`` plus their
    number, then twice as many for rows still short of ``k`` eligible items; the answer's scores
    are recomputed exactly in float64 and ordered as :func:`exact_search` orders them.

    Threads: the graph is built on one faiss thread (deterministic: the same vectors give the
    same graph), the caller's OpenMP setting restored afterwards. Searching uses faiss' threads
    as the process sets them (``OMP_NUM_THREADS``, ``faiss.omp_set_num_threads``); each query
    is searched alone, so answers do not depend on the thread count. Apart from ``ef_search``
    the index is read-only after building: concurrent :meth:`search` calls are safe.
    """

    def __init__(
        self, items: np.ndarray, m: int = 32, ef_construction: int = 200, ef_search: int = 128
    ):
        faiss = require_faiss()
        self._items = _matrix(items, "items")
        self.m = _positive_int(m, "m", 2)
        self.ef_construction = _positive_int(ef_construction, "ef_construction")
        self._index = self._build(faiss, self._items)
        self.ef_search = ef_search

    # the graph and the query transform: the one place the MIPS method lives
    def _build(self, faiss: Any, items: np.ndarray) -> Any:
        index = faiss.IndexHNSWFlat(items.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        with _one_thread(faiss):
            index.add(items)
        return index

    def _query(self, queries: np.ndarray) -> np.ndarray:
        """(n, d') the queries as the graph is searched with them (as given: no transform)."""
        return queries

    @property
    def size(self) -> int:
        """I, the number of items."""
        return int(self._items.shape[0])

    @property
    def dim(self) -> int:
        """d, the items' (and queries') dimension."""
        return int(self._items.shape[1])

    @property
    def ef_search(self) -> int:
        """The candidate list of a search (faiss uses at least the number of results asked)."""
        return int(self._index.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._index.hnsw.efSearch = _positive_int(value, "ef_search")

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` items by inner product for each query.

        queries: (n, d) float32; ``exclude[i]``: internal item indices to leave out for query i
        (its seen items). Returns ids (n, k) int64 and scores (n, k) float64: exact inner
        products, highest first, ties by item index; rows with fewer than ``k`` eligible items
        are padded with -1 and -inf.

        faiss takes one k per call, so rows are grouped by the candidate count they need
        (``k`` + their exclusions, rounded up to a power of two, at most I): one faiss call per
        group and per widening round, never one per query. A row still short after asking for
        all I items (the graph did not reach them all) is answered exactly.
        """
        queries = _matrix(queries, "queries", self.dim)
        k = _positive_int(k, "k")
        n, num = len(queries), self.size
        keys, n_excl = _exclusions(exclude, n, num)
        want = np.minimum(k, num - n_excl)  # (n,) eligible items to find per row
        need = np.minimum(k + n_excl, num)
        width = np.minimum(2 ** np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64), num)
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf)
        searched = self._query(queries)
        pending = np.arange(n)
        while len(pending):
            short = []
            for w in np.unique(width[pending]):
                rows = pending[width[pending] == w]
                _, found = self._index.search(searched[rows], int(w))  # (r, w), -1: none
                found[_excluded(keys, rows, np.maximum(found, 0), num)] = -1
                ok = (found >= 0).sum(1) >= want[rows]
                done = rows[ok]
                ids[done], scores[done] = _rank(self._items, queries[done], found[ok], k)
                short.append(rows[~ok])
            pending = np.concatenate(short)
            full = pending[width[pending] >= num]
            if len(full):  # the graph did not reach every item for these rows
                ids[full], scores[full] = _exact(self._items, queries, full, k, keys)
            pending = pending[width[pending] < num]
            width[pending] = np.minimum(2 * width[pending], num)
        return ids, scores
