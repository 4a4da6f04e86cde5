"""CPU microseconds per training pair of MF's compiled, fused BPR step alone (no loader, no
Lightning), at a table shape: the number behind benchmarks/scale.md's step-level comparisons.

    OMP_NUM_THREADS=1 python benchmarks/scripts/mf_fused_step.py 943 1682     # ml-100k's shape
    OMP_NUM_THREADS=1 python benchmarks/scripts/mf_fused_step.py 138493 26744 60

Arguments: users, items, and optionally the number of batches (default 20). Uniform random
batches of 8,192 (user, item, negative) triples, 64 factors, one negative, row-wise Adagrad
(lr 0.02) applied in the backward (``optim.fused``); two warm-up passes (compilation), then the
best and the median of 12 passes over the batches, in process CPU time. To compare two commits,
run it from each checkout in turn (``PYTHONPATH=<checkout>``).
"""

import sys
import time

import numpy as np
import torch

from recsys.data.batches import PairBatch
from recsys.models.mf import MF
from recsys.training.optimizers import RowAdagrad, row_updates_of

BATCH = 8192


def main() -> None:
    users, items = int(sys.argv[1]), int(sys.argv[2])
    n_batches = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    torch.manual_seed(0)
    model = MF(users, items, 64, "bpr", 1, init="xavier", sparse=True, compile=True)
    opt = RowAdagrad(model.parameters(), lr=0.02, compile=True, fused=True)
    assert model.use_row_updates(row_updates_of(opt))
    batches = [
        PairBatch(
            user=torch.randint(users, (BATCH,)),
            item=torch.randint(items, (BATCH,)),
            neg=torch.randint(items, (BATCH, 1)),
        )
        for _ in range(n_batches)
    ]

    def one_pass() -> None:
        for b in batches:
            opt.zero_grad()
            model.loss(b)["loss"].backward()
            opt.step()

    one_pass()
    one_pass()
    times = []
    for _ in range(12):
        c0 = time.process_time()
        one_pass()
        times.append(time.process_time() - c0)
    per = 1e6 / (n_batches * BATCH)
    print(
        f"{users} x {items}: {min(times) * per:.3f} us per pair "
        f"(median {np.median(times) * per:.3f})"
    )


if __name__ == "__main__":
    main()
