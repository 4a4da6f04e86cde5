"""Peak memory of the bench's standalone full-ranking pass over a checkpoint's test users.

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=/path/to/datasets \
      python -m benchmarks.scripts.eval_memory <run>/checkpoints/last.ckpt [repeats]

Runs ``benchmarks.runner.matrix.measure_eval`` (score pass and full evaluation pass, ``repeats``
times each) and prints the process's peak RSS (``VmHWM``) before and after it, and the pass
time. Used for the NeuMF Amazon Beauty evaluation memory in benchmarks/matrix.md.
"""

import sys
import time
from pathlib import Path

import torch

from benchmarks.runner.machine import peak_rss_mb
from benchmarks.runner.matrix import measure_eval
from recsys.training.runs import open_run

run = open_run(Path(sys.argv[1]))
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 1
module, dm = run.module.eval(), run.datamodule
before = peak_rss_mb()
t0 = time.perf_counter()
result = measure_eval(module, dm, torch.device("cpu"), repeats=repeats)
print(
    f"peak RSS before {before:.0f} MiB, after {peak_rss_mb():.0f} MiB; "
    f"full pass {result['full_pass_s']:.1f} s, whole measurement {time.perf_counter() - t0:.1f} s"
)
