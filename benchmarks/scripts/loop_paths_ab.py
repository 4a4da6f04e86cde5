"""In-process A/B/C of the ``optim.steps_per_call`` loop: epoch e takes path e % 3 (the same
updates in all): Lightning's private step calls (what RecModule did before it moved to the public
API), ``LightningOptimizer.step`` with a direct backward (what it does now), and Lightning's whole
manual path. BPR-MF on ml-100k, one thread; prints per-path epoch CPU time and paired differences.
The private path is here only to measure what leaving it cost (benchmarks/general.md).

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=<datasets> python -m benchmarks.scripts.loop_paths_ab 120
"""

import importlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.runner.matrix import compose
from benchmarks.scripts import bpr_ml100k
from recsys.training.module import RecModule
from recsys.training.train import train

PATHS = ("private", "public_step", "lightning")


def training_step(self, batch, batch_idx):
    path = PATHS[self.current_epoch % 3]
    opt = self.optimizers()
    for b in batch:
        loss = self._train_loss(b)
        opt.zero_grad()
        if path == "private":
            loss.backward()
            opt._on_before_step()
            opt.optimizer.step()
            opt._on_after_step()
        elif path == "public_step":
            loss.backward()
            opt.step()
        else:
            self.manual_backward(loss)
            opt.step()
    if batch_idx + 1 >= self.trainer.num_training_batches:
        self._log_train_losses()
    return None


RecModule.training_step = training_step
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 90
overrides = [
    *bpr_ml100k.overrides(epochs, val_every=epochs, early_stopping=False),
    "optim.steps_per_call=64",
]
out = Path(tempfile.gettempdir()) / "loop_paths_ab"
shutil.rmtree(out, ignore_errors=True)
metrics = train(compose(overrides, out))
t = importlib.import_module("benchmarks.runner.matrix").EpochTimer.last
cpu = np.array(t.train_cpu_s)
steps = t.samples[0] / 2048
print(f"steps/epoch ~{steps:.1f}; val ndcg@10 {metrics['val']['ndcg@10']}")
for i, name in enumerate(PATHS):
    c = cpu[3 + i :: 3]
    print(
        f"{name:12s} n={len(c)} median {np.median(c) * 1e3:.2f} ms  mean {c.mean() * 1e3:.2f} ms  min {c.min() * 1e3:.2f} ms"
    )
# paired: each triple of consecutive epochs
tri = cpu[3 : 3 + 3 * ((len(cpu) - 3) // 3)].reshape(-1, 3)
for i, name in enumerate(PATHS[1:], 1):
    d = tri[:, i] - tri[:, 0]
    print(
        f"{name} - private: median {np.median(d) * 1e3:+.2f} ms/epoch ({np.median(d / tri[:, 0]) * 100:+.1f}%)"
    )
