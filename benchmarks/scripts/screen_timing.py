"""Wall time of ranking one query's top-10 over an artifact's item table: the whole float32
product then ``_top``, against the int8 screen (``recsys.serving.screen``) then ``_top`` over
its candidates, spun apart as the service's requests are::

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.screen_timing outputs/bench-serve/mf

The artifact's own users (their vectors, their seen items excluded); ms per query, median of
``--calls``, the two paths alternated call by call; and how many candidates the screen kept.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.scripts.dot_rows_timing import spin
from recsys.serving.artifact import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", help="exported dot-product artifacts")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--gap-ms", type=float, default=4.0, help="spun before each timed call")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()
    for path in args.artifacts:
        rec = load(path)
        start = time.perf_counter()
        screen = rec._screen()
        print(
            f"{path}: {rec.scan_path}, {rec.num_items} items, ready in "
            f"{time.perf_counter() - start:.2f} s"
        )
        if screen is None:
            continue
        users = np.flatnonzero(np.diff(rec.indptr) > 0)[: args.calls]
        q = rec._query_vectors(users.tolist(), [rec.history(u) for u in users])
        times: dict[str, list[float]] = {"whole product": [], "int8 screen": []}
        kept = []
        for n, u in enumerate(users):
            seen = rec.history(int(u))
            spin(args.gap_ms / 1e3)
            t = time.perf_counter()
            whole = rec._top(np.matmul(q[n], rec._dot), seen, args.k, own=True)
            times["whole product"].append(time.perf_counter() - t)
            spin(args.gap_ms / 1e3)
            t = time.perf_counter()
            cand, exact = screen.top(q[n], args.k, seen)
            got = rec._top(exact, None, args.k, rec.item_ids[cand], own=True)
            times["int8 screen"].append(time.perf_counter() - t)
            kept.append(len(cand))
            assert got[0] == whole[0], (u, got[0], whole[0])
        ms = {k: round(float(np.median(v)) * 1e3, 3) for k, v in times.items()}
        print(f"  ms per query ({len(users)} users, {args.gap_ms} ms apart): {ms}")
        print(f"  candidates: median {np.median(kept):.0f}, max {max(kept)}; same top-{args.k}")


if __name__ == "__main__":
    main()
