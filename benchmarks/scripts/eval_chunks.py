"""Full-ranking pass time of a checkpoint's test users by users per chunk (``eval.batch_size``).

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=/path/to/datasets \
      python benchmarks/scripts/eval_chunks.py <run>/checkpoints/best.ckpt 128,256,1024 [repeats]

For each chunk size, the best of ``repeats`` (default 15) passes of ``RecModule.evaluate``
over every test user (score, mask seen items, top-k, metrics), as the bench's standalone pass.
"""

import sys
import time
from pathlib import Path

import torch

from recsys.training.runs import open_run

path = Path(sys.argv[1])
sizes = [int(x) for x in sys.argv[2].split(",")]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 15
for bs in sizes:
    run = open_run(path, eval_batch_size=bs)
    module, dm = run.module.eval(), run.datamodule
    batches = list(dm.test_dataloader())
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            module.evaluate(batches)
            best = min(best, time.perf_counter() - t0)
    print(f"eval.batch_size={bs}: {len(batches)} chunks, best pass {best * 1000:.1f} ms")
