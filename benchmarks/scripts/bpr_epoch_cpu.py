"""Training CPU seconds per epoch of the bench's BPR-MF on ml-100k (benchmarks/matrix.md).

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=/path/to/datasets python -m benchmarks.scripts.bpr_epoch_cpu after

30 epochs of the `bpr-ml-100k` bench entry (validation only after the last), through
`recsys.training.train.train`; prints the median and mean training CPU seconds of epochs 4-30 (without
validation) and the validation NDCG@10, which must not change between two versions of the code.
To compare with an older commit C, run the same file against an export of it:

    git archive C recsys configs | tar -x -C <scratch>/before
    git archive HEAD benchmarks | tar -x -C <scratch>/before    # today's runner and this script
    (cd <scratch>/before && python -m benchmarks.scripts.bpr_epoch_cpu before)
"""

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.runner.matrix import EpochTimer, compose
from benchmarks.scripts import bpr_ml100k
from recsys.training.train import train

label = sys.argv[1] if len(sys.argv) > 1 else "run"
overrides = [*bpr_ml100k.overrides(epochs=30, val_every=30), *sys.argv[2:]]
out = Path(tempfile.gettempdir()) / f"bpr_epoch_cpu_{label}"
shutil.rmtree(out, ignore_errors=True)
metrics = train(compose(overrides, out))
timer = EpochTimer.last
cpu = np.array(timer.train_cpu_s[3:])
print(
    f"{label}: train CPU s/epoch median {np.median(cpu):.4f} mean {cpu.mean():.4f} "
    f"min {cpu.min():.4f}; val ndcg@10 {metrics['val']['ndcg@10']}"
)
