"""In-process A/B/C of logging a validation pass's metrics: epoch e uses variant e % 3 --
Lightning's private logger connector (before), ``Logger.log_metrics`` (now), ``self.log`` for
every metric. BPR-MF on ml-100k, TensorBoard on, one thread; prints validation-pass CPU time.
The private variant is here only to measure what leaving it cost (benchmarks/general.md).

    OMP_NUM_THREADS=1 RECSYS_DATA_DIR=<datasets> python -m benchmarks.scripts.logging_ab 90
"""

import importlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.runner.matrix import compose
from benchmarks.scripts import bpr_ml100k
from recsys.training.callbacks import EpochSummary
from recsys.training.module import RecModule
from recsys.training.train import train

VARIANTS = ("private_connector", "public_loggers", "self_log_all")


def _log_stage(self, stage, means):
    v = VARIANTS[self.current_epoch % 3]
    named = {f"{stage}/{k}": val for k, val in means.items()}
    watched = {str(self.eval_cfg.get("monitor"))}
    for cb in self.trainer.callbacks:
        watched.update(m for m in [getattr(cb, "monitor", None)] if isinstance(m, str))
        if isinstance(cb, EpochSummary):
            watched.update(cb.metrics)
    self.log_dict({k: x for k, x in named.items() if k in watched}, sync_dist=False)
    rest = {k: x for k, x in named.items() if k not in watched}
    if v == "self_log_all":
        self.log_dict(rest, sync_dist=False)
    elif v == "private_connector":
        if rest and not self.trainer.sanity_checking:
            self.trainer._logger_connector.log_metrics(rest)
    else:
        self._to_loggers(rest)


RecModule._log_stage = _log_stage
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 60
overrides = [
    *bpr_ml100k.overrides(epochs, val_every=1, early_stopping=False, logger=True),
    "optim.steps_per_call=64",
]
out = Path(tempfile.gettempdir()) / "logging_ab"
shutil.rmtree(out, ignore_errors=True)
metrics = train(compose(overrides, out))
t = importlib.import_module("benchmarks.runner.matrix").EpochTimer.last
val = np.array(t.val_cpu_s)
tr = np.array(t.train_cpu_s)
print(f"n metrics per pass {len(metrics['val'])}; train median {np.median(tr) * 1e3:.1f} ms")
for i, name in enumerate(VARIANTS):
    c = val[3 + i :: 3]
    print(
        f"{name:18s} n={len(c)} val pass median {np.median(c) * 1e3:.2f} ms  mean {c.mean() * 1e3:.2f}  min {c.min() * 1e3:.2f}"
    )
tri = val[3 : 3 + 3 * ((len(val) - 3) // 3)].reshape(-1, 3)
for i, name in enumerate(VARIANTS[1:], 1):
    d = tri[:, i] - tri[:, 0]
    print(f"{name} - private_connector: median {np.median(d) * 1e3:+.2f} ms per pass")
