"""recsys.serving.ann: the HNSW inner-product index against the brute-force reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.serving.ann import InnerProductIndex, exact_search, recall_at_k

pytest.importorskip("faiss")

NUM, DIM, K = 2000, 32, 10


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    # varied norms, as trained embeddings have: MIPS differs from cosine search
    items = rng.standard_normal((NUM, DIM)) * rng.uniform(0.5, 2.0, (NUM, 1))
    queries = rng.standard_normal((200, DIM))
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.fixture(scope="module")
def index(data) -> InnerProductIndex:
    return InnerProductIndex(data[0])


def test_recall_with_default_parameters(data, index):
    items, queries = data
    ids, scores = index.search(queries, K)
    assert ids.shape == scores.shape == (len(queries), K)
    assert ids.dtype == np.int64 and scores.dtype == np.float64
    assert index.size == NUM and index.dim == DIM
    exact_ids, _ = exact_search(items, queries, K)
    assert recall_at_k(ids, exact_ids) >= 0.95
    # scores are the exact inner products of the returned items, highest first
    want = np.einsum("nkd,nd->nk", items[ids].astype(np.float64), queries.astype(np.float64))
    np.testing.assert_allclose(scores, want, rtol=1e-12)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_large_ef_search_equals_exact_search(data, index):
    items, queries = data
    rng = np.random.default_rng(1)
    exclude = [rng.choice(NUM, rng.integers(0, 40), replace=False) for _ in queries]
    index.ef_search = NUM
    try:
        got = index.search(queries, K, exclude)
    finally:
        index.ef_search = 128
    want = exact_search(items, queries, K, exclude)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_exclusion_never_returns_excluded_and_still_returns_k(data, index):
    items, queries = data
    exact_ids, _ = exact_search(items, queries, 50)
    # each row excludes its own exact top 50: every natural candidate is gone
    exclude = [row.copy() for row in exact_ids]
    ids, scores = index.search(queries, K, exclude)
    for row, ex in zip(ids, exclude, strict=True):
        assert not np.isin(row, ex).any()
    assert (ids >= 0).all() and np.isfinite(scores).all()
    want, _ = exact_search(items, queries, K, exclude)
    assert recall_at_k(ids, want) >= 0.95


def test_padding_when_fewer_than_k_eligible():
    items = np.eye(4, dtype=np.float32)
    index = InnerProductIndex(items, m=2)
    queries = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], np.float32)
    exclude = [np.array([3, 0, 3]), None]  # a repeated id counts once; None: nothing
    for ids, scores in (
        index.search(queries, 5, exclude),
        exact_search(items, queries, 5, exclude),
    ):
        np.testing.assert_array_equal(ids, [[2, 1, -1, -1, -1], [0, 1, 2, 3, -1]])
        np.testing.assert_array_equal(scores[0], [3, 2, -np.inf, -np.inf, -np.inf])
        np.testing.assert_array_equal(scores[1], [4, 3, 2, 1, -np.inf])


def test_exact_search_ties_by_item_index():
    # scores of items 0..5 for the query (1, 1): 1, 2, 2, 1, 2, 0
    items = np.array([[1, 0], [2, 0], [1, 1], [0, 1], [0, 2], [0, 0]], np.float32)
    ids, scores = exact_search(items, np.ones((1, 2), np.float32), 4)
    np.testing.assert_array_equal(ids, [[1, 2, 4, 0]])
    np.testing.assert_array_equal(scores, [[2, 2, 2, 1]])
    ids, _ = exact_search(items, np.ones((1, 2), np.float32), 4, [np.array([2])])
    np.testing.assert_array_equal(ids, [[1, 4, 0, 3]])
    index = InnerProductIndex(items, m=2, ef_search=16)
    np.testing.assert_array_equal(index.search(np.ones((1, 2)), 4)[0], [[1, 2, 4, 0]])


def test_recall_at_k_hand_worked():
    exact = np.array([[1, 2, 3], [4, 5, -1], [-1, -1, -1]])
    approx = np.array([[3, 9, 1], [5, -1, -1], [7, 8, 9]])
    # row 0: {1, 3} of 3 -> 2/3; row 1: {5} of the 2 valid -> 1/2; row 2: nothing to find
    assert recall_at_k(approx, exact) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert recall_at_k(exact, exact) == 1.0


class _Short:
    """A graph that finds only its first 3 results: every row stays short of k."""

    def __init__(self, index):
        self.index = index

    def search(self, x, k):
        dist, found = self.index.search(x, k)
        found[:, 3:] = -1
        return dist, found


def test_rows_short_of_k_widen_then_fall_back_to_exact(data):
    items, queries = data
    index = InnerProductIndex(items[:300], ef_search=16)
    index._index = _Short(index._index)
    exclude = [np.arange(i % 5) for i in range(len(queries))]
    got = index.search(queries, K, exclude)
    want = exact_search(items[:300], queries, K, exclude)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_build_is_deterministic_and_keeps_the_thread_setting(data):
    import faiss

    items, queries = data
    before = faiss.omp_get_max_threads()
    a = InnerProductIndex(items[:500], ef_search=16).search(queries, K)
    b = InnerProductIndex(items[:500], ef_search=16).search(queries, K)
    np.testing.assert_array_equal(a[0], b[0])
    assert faiss.omp_get_max_threads() == before


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    with pytest.raises(RecsysError, match=r"--ann hnsw needs faiss-cpu \(pip install -e"):
        InnerProductIndex(np.ones((3, 2), np.float32))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: InnerProductIndex(x[0]), "items: must be 2-D"),
        (lambda x: InnerProductIndex([["a", "b"]]), "items: must be a 2-D array of numbers"),
        (lambda x: InnerProductIndex(np.zeros((0, 3))), "items: must have at least one row"),
        (lambda x: InnerProductIndex([[np.nan, 1.0]]), "items: must be finite"),
        (lambda x: InnerProductIndex(x, m=1), "m must be an integer >= 2"),
        (lambda x: InnerProductIndex(x, ef_search=0), "ef_search must be an integer >= 1"),
        (lambda x: InnerProductIndex(x).search(np.ones((1, 3)), 2), "queries: must have 2"),
        (lambda x: InnerProductIndex(x).search(np.ones(2), 2), "queries: must be 2-D"),
        (lambda x: InnerProductIndex(x).search(np.ones((1, 2)), 0), "k must be an integer >= 1"),
        (lambda x: InnerProductIndex(x).search(np.ones((1, 2)), 1.5), "k must be an integer"),
        (
            lambda x: InnerProductIndex(x).search(np.ones((2, 2)), 1, [np.array([0])]),
            "exclude: must hold one array of item indices per query (2), got 1",
        ),
        (
            lambda x: InnerProductIndex(x).search(np.ones((1, 2)), 1, [np.array([5])]),
            r"exclude[0]: item indices must be in [0, 3)",
        ),
        (lambda x: exact_search(x, np.ones((1, 2)), True), "k must be an integer"),
        (lambda x: exact_search(x, np.ones((1, 3)), 1), "queries: must have 2 columns"),
        (lambda x: recall_at_k(np.ones((2, 3)), np.ones(3)), "recall_at_k: approx_ids"),
    ],
)
def test_bad_inputs_name_the_argument(call, message):
    items = np.arange(6, dtype=np.float32).reshape(3, 2)
    with pytest.raises(RecsysError) as err:
        call(items)
    assert message in str(err.value)
