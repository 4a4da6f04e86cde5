"""Memory and CPU time of each load/split stage of the scale pipeline (benchmarks/scale.md).

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.scale_memprof 1e7

Generates the Netflix-shaped scale log with N events (users scaled as 480,189 * N / 1e8, 17,770
items) and runs the pipeline's stages one by one, printing per stage: CPU seconds, memory traced
by tracemalloc (numpy's buffers included) now and at the stage's peak, the process RSS and its
peak. The last two stages are the CSRs the evaluation builds (validation and test histories).
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc

from benchmarks.runner.machine import current_rss_mb
from benchmarks.runner.scale import scale_source
from recsys.data.audit import audit_split
from recsys.data.interactions import Interactions
from recsys.data.preprocess import preprocess_config
from recsys.data.splits import make_split

_last = [0.0]


def stage(name: str) -> None:
    cur, peak = tracemalloc.get_traced_memory()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{name:20s} cpu {time.process_time() - _last[0]:7.1f} s  traced now {cur / 2**20:7.0f} MiB"
        f"  stage peak {peak / 2**20:7.0f} MiB  rss {current_rss_mb():7.0f}  max rss {maxrss:7.0f}",
        flush=True,
    )
    tracemalloc.reset_peak()
    _last[0] = time.process_time()


def main(n: int) -> None:
    cfg = {
        "scale_users": int(480_189 * n / 1e8),
        "scale_items": 17_770,
        "scale_interactions": n,
        "dedup": False,
    }
    tracemalloc.start()
    stage("start")
    df = scale_source(cfg)
    stage("source")
    df = preprocess_config(df, cfg, source="scale")
    stage("preprocess")
    inter = Interactions.from_frame(df)
    stage("encode ids")
    del df
    stage("free the frame")
    split = make_split(inter, "leave_one_out", 0.1, 0.1, seed=0)
    stage("split")
    del inter
    stage("free the log")
    audit_split(split, repeats=True)
    stage("audit")
    split.train.to_csr()
    stage("val history CSR")
    split.train.concat(split.val).to_csr()
    stage("test history CSR")


if __name__ == "__main__":
    main(int(float(sys.argv[1])))
