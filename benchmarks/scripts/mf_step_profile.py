"""CPU time and torch.profiler's table of BPR-MF training steps at the 20M shape (scale.md).

    OMP_NUM_THREADS=1 python benchmarks/scripts/mf_step_profile.py dense      # as it was: Adam
    OMP_NUM_THREADS=1 python benchmarks/scripts/mf_step_profile.py sparse     # row-sparse, eager
    OMP_NUM_THREADS=1 python benchmarks/scripts/mf_step_profile.py compiled   # the shipped step

138,493 users × 26,744 items (MovieLens-20M's shape), 19M uniform random training pairs, 64
factors, one negative, batch 2,048 (a second argument changes it). ``dense``: the dense
gradients and fused Adam of before, negatives checked by a binary search over the sorted
training keys; ``sparse`` and ``compiled``: row-sparse gradients, row-wise Adagrad, the bit table
of training pairs, the step eager or compiled. Prints the CPU milliseconds per step over 300
steps (after 50 of warm-up) and the profiler's 12 most expensive operations over 200 more.
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from recsys.data.loaders import PairLoader, PairSet
from recsys.models.mf import MF
from recsys.training.optimizers import RowAdagrad

USERS, ITEMS, PAIRS = 138_493, 26_744, 19_000_000


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "compiled"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    g = torch.Generator().manual_seed(0)
    user = torch.randint(USERS, (PAIRS,), generator=g)
    item = torch.randint(ITEMS, (PAIRS,), generator=g)
    sparse, compiled = mode != "dense", mode == "compiled"
    model = MF(USERS, ITEMS, 64, "bpr", 1, init="xavier", sparse=sparse, compile=compiled)
    if sparse:
        opt = RowAdagrad(model.parameters(), lr=0.02, compile=compiled)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loader = PairLoader(user, item, None, ITEMS, 1, batch, 0)
    if not sparse:  # the sorted-key search of before
        loader.positives = PairSet(user, item, ITEMS, bitset=False)
    batches = iter(loader)

    def steps(n: int) -> None:
        for _ in range(n):
            b = next(batches)
            loss = model.loss(b)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

    steps(50)
    t0 = time.process_time()
    steps(300)
    ms = (time.process_time() - t0) / 300 * 1e3
    print(f"{mode}: {ms:.2f} CPU ms per step of {batch} pairs, {ms / batch * 1e3:.3f} us per pair")
    with profile(activities=[ProfilerActivity.CPU]) as p:
        steps(200)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
