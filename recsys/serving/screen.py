"""Exact top-k of a dot-product model over a large catalogue, screened with an int8 copy of
the item table.

A dot-product model (MF, the sequence models) ranks item ``j`` for a query ``q`` by
``q · v_j``. For one query the float32 product reads the whole (I, d) table: 17 MiB for 17,632
items at d 256, which comes from DRAM between service requests (benchmarks/serving.md). The
screen keeps each row as int8 with one float32 scale (``v_j ≈ s_j · w_j``, 4x fewer bytes) and,
per query:

1. scores every item approximately, ``a_j = t · s_j · (q16 · w_j)``, with the query rounded to
   int16 (``q ≈ t · q16``) and the sums in int32 (exact): a compiled loop (numba) over the
   int8 rows;
2. bounds each approximation: with ``r_j = v_j - s_j w_j`` and ``e = q - t q16``,
   ``q · v_j - a_j = q · r_j + e · (s_j w_j)``, so by Cauchy-Schwarz
   ``|q · v_j - a_j| <= |q| |r_j| + |e| |s_j w_j|``; float32 rounding of the exact product
   (at most ``d · 2^-24 · |q| |v_j|``, whatever the summation order) is added to the bound;
3. keeps as candidates the items whose upper bound reaches the k-th largest lower bound: the
   items of the exact top-k (ties included) all do;
4. scores the candidates exactly (float32, their rows gathered) and ranks them.

So the answer is the exact ranking, not an approximation: the candidates' float32 scores may
differ from a whole-table BLAS product's in the last bits (another order of summation), so two
items whose scores agree to those bits may swap, nothing else. A query the screen cannot
certify cheaply (not finite, k above an eighth of the catalogue, more candidates than that)
returns None and the caller scores the whole table.

numba (``pip install -e '.[serve]'``) is imported where used: without it there is no screen
and scoring reads the float32 table, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# items * dim from which a screen is built (8 MiB of float32): at 4.5 MiB (17,632 items at d 64)
# the float32 product was as fast as the screen, at 12-17 MiB 1.6-1.7x slower
# (benchmarks/serving.md)
SCREEN_MIN_ELEMENTS = 1 << 21
# more candidates than this share of the catalogue: the whole product is cheaper
_MAX_SHARE = 0.125
_Q_MAX = 32767  # int16 query
_EPS32 = 2.0**-24  # float32 unit roundoff
_BUILD_ROWS = 2048

_kernels: Any = None
unavailable = ""  # why there are no compiled loops, once :func:`kernels` found none


def kernels() -> Any:
    """The compiled loops (numba; compiled on first use, ~1.5 s, then cached beside the module
    or in numba's user cache: ~0.4 s), or None when numba is not installed or cannot compile
    them (:data:`unavailable` says which)."""
    global _kernels, unavailable
    if _kernels is None:
        try:
            from recsys.serving import _screen_kernels
        except ImportError:
            _kernels, unavailable = False, "numba is not installed"
        except Exception as e:  # noqa: BLE001 - no screen is a slower path, not an error
            _kernels = False
            unavailable = f"the screen's loops did not compile: {type(e).__name__}: {e}"
        else:
            _kernels = _screen_kernels
    return _kernels or None


def _up(x: np.ndarray) -> np.ndarray:
    """float64 -> float32, rounded up (a bound stays a bound)."""
    return np.nextafter(x.astype(np.float32), np.float32(np.inf))


class Int8Screen:
    """The int8 copy of an (I, d) float32 item table and, per item, the bounds' constants.

    ``items`` is kept by reference: candidates are rescored from it."""

    def __init__(self, items: np.ndarray, compiled: Any):
        items = np.ascontiguousarray(items, dtype=np.float32)
        if items.ndim != 2 or not len(items) or not np.isfinite(items).all():
            raise ValueError("Int8Screen: items must be a finite, non-empty (I, d) float32 table")
        self.items = items
        self._k = compiled
        n, d = items.shape
        # the int16 query's largest magnitude: d int8 x int16 products must fit int32
        self.q_max = min(_Q_MAX, (2**31 - 1) // (127 * d))
        self.codes = np.empty((n, d), np.int8)
        self.scale = np.empty(n, np.float32)
        self.residual_term = np.empty(n, np.float32)
        self.code_norm = np.empty(n, np.float32)
        gamma = d * _EPS32 * 1.01 / (1 - d * _EPS32)  # float32 dot product error, any order
        for s in range(0, n, _BUILD_ROWS):  # in blocks: no table-sized float64 temporaries
            block = items[s : s + _BUILD_ROWS]
            top = np.abs(block).max(axis=1)
            scale = np.where(top > 0, top / 127, 1).astype(np.float32)
            codes = np.rint(block / scale[:, None]).clip(-127, 127).astype(np.int8)
            exact = block.astype(np.float64)
            approx = codes * scale.astype(np.float64)[:, None]
            residual = np.linalg.norm(exact - approx, axis=1)
            # |q . v_j - a_j| <= |q| * residual_term_j + |e| * code_norm_j (rounded up)
            self.codes[s : s + len(block)] = codes
            self.scale[s : s + len(block)] = scale
            self.residual_term[s : s + len(block)] = _up(
                residual + gamma * np.linalg.norm(exact, axis=1)
            )
            self.code_norm[s : s + len(block)] = _up(np.linalg.norm(approx, axis=1))

    def candidates(self, q: np.ndarray, k: int, seen: np.ndarray | None) -> np.ndarray | None:
        """Sorted item indices that hold the exact top-``k`` of ``q`` (``seen`` left out, ties
        at the k-th score included), or None when the screen cannot certify them cheaply."""
        n = len(self.codes)
        if k < 1 or k * 8 > n or not np.isfinite(q).all():
            return None
        seen = np.zeros(0, np.int64) if seen is None else np.asarray(seen, dtype=np.int64)
        if len(seen) and (seen.min() < 0 or seen.max() >= n):
            return None
        q = np.ascontiguousarray(q, dtype=np.float32)
        cand = self._k.screen(
            q, self.codes, self.scale, self.residual_term, self.code_norm, seen, k, self.q_max
        )
        if len(cand) > _MAX_SHARE * n or len(cand) < k:
            return None
        return cand

    def top(
        self, q: np.ndarray, k: int, seen: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Candidate indices and their exact float32 scores (see :meth:`candidates`)."""
        cand = self.candidates(q, k, seen)
        if cand is None:
            return None
        return cand, self.items[cand] @ np.asarray(q, dtype=np.float32)


def build_screen(items: np.ndarray) -> Int8Screen | None:
    """An :class:`Int8Screen` of the (I, d) table, or None when numba is not installed or the
    table is not finite (whether the catalogue is large enough to gain, at least
    :data:`SCREEN_MIN_ELEMENTS`, is the caller's choice)."""
    compiled = kernels()
    if compiled is None:
        return None
    try:
        return Int8Screen(items, compiled)
    except ValueError:  # not finite, or empty: Int8Screen checks
        return None
