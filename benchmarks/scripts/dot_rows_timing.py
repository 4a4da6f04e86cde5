"""Wall time of the serving product for a few user vectors, one BLAS product against
``dot_rows`` (one matrix-vector product per row below ``GEMV_ROWS``), spun apart as the
service's requests are (the table then partly out of cache)::

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.dot_rows_timing 12101 17632

A random float32 (256, I) table per size; ms per product, median of ``--calls``, the two
alternated call by call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recsys.serving.artifact import dot_rows


def spin(seconds: float) -> None:
    """Busy-wait ``seconds``: requests spaced as in the service, the CPU kept awake."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("items", type=int, nargs="+", help="catalogue sizes")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rows", default="1,2,3,4,5,8")
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--gap-ms", type=float, default=4.0, help="spun before each timed call")
    args = p.parse_args()
    for n_items in args.items:
        table = np.random.default_rng(0).standard_normal((args.dim, n_items)).astype(np.float32)
        print(f"items={n_items}")
        for m in (int(r) for r in args.rows.split(",")):
            q = np.random.default_rng(m).standard_normal((m, args.dim)).astype(np.float32)
            out = np.empty((m, n_items), dtype=np.float32)
            ways = {
                "one matmul": lambda q=q, out=out, t=table: np.matmul(q, t, out=out),
                "dot_rows": lambda q=q, out=out, t=table: dot_rows(q, t, out),
            }
            times: dict[str, list[float]] = {k: [] for k in ways}
            for _ in range(args.calls):
                for name, way in ways.items():
                    spin(args.gap_ms / 1e3)
                    t = time.perf_counter()
                    way()
                    times[name].append(time.perf_counter() - t)
            ms = {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()}
            print(f"  {m} rows: {ms}")


if __name__ == "__main__":
    main()
