"""``dot_rows``, the user-vector × item-table product of dot-product artifacts
(recsys.serving.artifact): equal to the matrix product for every number of rows, and for fewer
than ``GEMV_ROWS`` rows each row's scores are those of the row alone (a history's scores do not
depend on the micro-batch it was scored in)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.serving.artifact import GEMV_ROWS, dot_rows


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 9])
def test_dot_rows_is_the_matrix_product(n):
    rng = np.random.default_rng(n)
    q = rng.standard_normal((n, 32)).astype(np.float32)
    table = rng.standard_normal((32, 301)).astype(np.float32)
    out = np.full((n, 301), np.nan, dtype=np.float32)
    dot_rows(q, table, out)
    want = q.astype(np.float64) @ table.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    if n < GEMV_ROWS:
        for r in range(n):
            assert np.array_equal(out[r], q[r] @ table)
