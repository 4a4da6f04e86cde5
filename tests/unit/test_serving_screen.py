"""The int8 screen (recsys.serving.screen): its candidates hold the exact top-k, checked against
a brute-force float64 ranking of the whole table, on tables built to stress the bound (uneven
row norms, rows that quantize alike, exact ties, zero rows, small and large d), with seen items
left out; and the queries it cannot certify are handed back (None), never answered wrongly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from recsys.serving.screen import Int8Screen, build_screen  # noqa: E402


def _table(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((3000, 64))
    if kind == "uneven norms":  # row norms over three orders of magnitude
        return rng.standard_normal((2000, 32)) * np.exp(rng.normal(0, 2, (2000, 1)))
    if kind == "alike":  # 60 long rows a hair apart: int8 codes alike, exact scores not
        t = rng.standard_normal((1500, 48))
        t[:60] = 3 * t[0] + 1e-3 * rng.standard_normal((60, 48))
        return t
    if kind == "ties":  # small integers: every float32 product is exact, many equal scores
        return rng.integers(-3, 4, (1200, 16)).astype(float)
    if kind == "zero rows":
        t = rng.standard_normal((1000, 24))
        t[::7] = 0
        return t
    if kind == "d 1":
        return rng.standard_normal((800, 1))
    if kind == "d 700":  # the int16 query is scaled down so that sums fit int32
        return rng.standard_normal((900, 700))
    raise AssertionError(kind)


KINDS = ["gaussian", "uneven norms", "alike", "ties", "zero rows", "d 1", "d 700"]


def _exact_top(items64: np.ndarray, q: np.ndarray, k: int, seen: np.ndarray) -> np.ndarray:
    """Brute force: every unseen item scoring at least the k-th best (float64 scores)."""
    s = items64 @ q.astype(np.float64)
    s[seen] = -np.inf
    kth = np.sort(s)[::-1][k - 1]
    return np.flatnonzero(s >= kth)


@pytest.mark.parametrize("kind", KINDS)
def test_candidates_hold_the_exact_top_k(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    items = _table(kind, rng).astype(np.float32)
    items64 = items.astype(np.float64)
    screen = build_screen(items)
    assert screen is not None
    n = len(items)
    sizes = []
    for trial in range(40):
        k = (1, 5, 10, 50)[trial % 4]
        q = rng.standard_normal(items.shape[1]).astype(np.float32)
        if kind == "ties":
            q = rng.integers(-3, 4, items.shape[1]).astype(np.float32)
        seen = np.unique(rng.integers(0, n, trial))
        got = screen.top(q, k, seen)
        assert got is not None, (kind, trial)
        cand, exact = got
        assert np.all(np.diff(cand) > 0) and not np.isin(cand, seen).any()
        assert set(_exact_top(items64, q, k, seen)) <= set(cand.tolist()), (kind, trial)
        np.testing.assert_allclose(exact, items64[cand] @ q, rtol=1e-5, atol=1e-5)
        sizes.append(len(cand))
        if kind == "ties":  # exact arithmetic: the k best by score then index, as brute force
            full = items64 @ q.astype(np.float64)
            full[seen] = -np.inf
            want = np.lexsort((np.arange(n), -full))[:k]
            assert cand[np.lexsort((cand, -exact))][:k].tolist() == want.tolist()
    if kind == "gaussian":  # the screen screens: a few dozen candidates, not the catalogue
        assert np.median(sizes) < 100, sizes


def test_the_approximation_alone_would_be_wrong():
    """The bound is needed: on rows that quantize alike, the int8 scores' own top-k misses
    exact top-k items that the candidates hold."""
    rng = np.random.default_rng(7)
    items = _table("alike", rng).astype(np.float32)
    screen = build_screen(items)
    missed = 0
    for _ in range(20):  # queries near the alike rows: they are the top-k
        q = (items[0] + rng.standard_normal(items.shape[1])).astype(np.float32)
        approx = (screen.codes.astype(np.float64) * screen.scale[:, None]) @ q.astype(np.float64)
        by_approx = set(np.argsort(-approx, kind="stable")[:10].tolist())
        want = set(_exact_top(items.astype(np.float64), q, 10, np.zeros(0, np.int64)))
        cand, _ = screen.top(q, 10, None)
        assert want <= set(cand.tolist())
        missed += len(want - by_approx)
    assert missed > 0


def test_what_cannot_be_certified_is_handed_back():
    rng = np.random.default_rng(3)
    items = rng.standard_normal((400, 8)).astype(np.float32)
    screen = build_screen(items)
    q = rng.standard_normal(8).astype(np.float32)
    assert screen.top(q, 51, None) is None  # k above an eighth of the catalogue
    assert screen.top(np.full(8, np.nan, np.float32), 5, None) is None  # not finite
    assert screen.top(q, 5, np.arange(396)) is None  # fewer than k items left
    assert screen.top(q, 5, np.array([400])) is None  # not an item
    assert screen.top(q, 5, np.arange(390)) is not None
    assert build_screen(np.full((400, 8), np.inf, np.float32)) is None
    with pytest.raises(ValueError):
        Int8Screen(np.zeros((0, 8), np.float32), None)
