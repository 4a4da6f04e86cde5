"""The compiled loops of :mod:`recsys.serving.screen` (numba: importing this module compiles
them, or loads them from numba's cache of an earlier compile). Kept apart so that recsys
imports without numba."""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_SKIP = np.int32(-(2**31))  # never a real sum: |sum| <= d * 127 * q_max < 2**31 - 1


@nb.njit(
    "int64[::1](float32[::1], int8[:, ::1], float32[::1], float32[::1], float32[::1], "
    "int64[::1], int64, int64)",
    nogil=True,
    boundscheck=False,
    cache=True,
)
def screen(q, codes, scale, residual_term, code_norm, seen, k, q_max):  # pragma: no cover
    """Sorted indices of the items whose score bound reaches the k-th largest lower bound
    (empty when fewer than k items are rankable). Shapes: q (d,), codes (I, d), the rest (I,)."""
    n, d = codes.shape
    # the query as int16: q ~ t * q16, and |q|, |q - t * q16|
    top = 0.0
    for i in range(d):
        top = max(top, abs(np.float64(q[i])))
    t = top / q_max if top > 0 else 1.0
    q16 = np.empty(d, np.int16)
    nq, ne = 0.0, 0.0
    for i in range(d):
        x = np.float64(q[i])
        r = np.rint(x / t)
        q16[i] = np.int16(r)
        nq += x * x
        ne += (x - r * t) ** 2
    nq = math.sqrt(nq) * (1 + 1e-9)
    ne = math.sqrt(ne) * (1 + 1e-6) + 1e-12 * nq
    # 1. every item's int32 sum (the loop LLVM turns into vpmaddwd)
    acc = np.empty(n, np.int32)
    for j in range(n):
        s = np.int32(0)
        for i in range(d):
            s += np.int32(q16[i]) * np.int32(codes[j, i])
        acc[j] = s
    for j in seen:
        acc[j] = _SKIP
    # 2. upper bounds, and the k-th largest lower bound (a min-heap of the k largest)
    hi = np.empty(n, np.float64)
    heap = np.empty(k, np.float64)
    size = 0
    for j in range(n):
        if acc[j] == _SKIP:
            hi[j] = -np.inf
            continue
        a = np.float64(acc[j]) * (np.float64(scale[j]) * t)
        e = nq * np.float64(residual_term[j]) + ne * np.float64(code_norm[j])
        hi[j] = a + e
        lo = a - e
        if size < k:  # sift up
            c = size
            size += 1
            heap[c] = lo
            while c > 0:
                p = (c - 1) // 2
                if heap[p] <= heap[c]:
                    break
                heap[p], heap[c] = heap[c], heap[p]
                c = p
        elif lo > heap[0]:  # replace the smallest, sift down
            heap[0] = lo
            c = 0
            while True:
                left = 2 * c + 1
                if left >= k:
                    break
                m = left
                if left + 1 < k and heap[left + 1] < heap[left]:
                    m = left + 1
                if heap[c] <= heap[m]:
                    break
                heap[c], heap[m] = heap[m], heap[c]
                c = m
    if size < k:
        return np.empty(0, np.int64)
    bar = heap[0]
    # 3. the candidates
    out = np.empty(n, np.int64)
    m = 0
    for j in range(n):
        if hi[j] >= bar:
            out[m] = j
            m += 1
    return out[:m].copy()
