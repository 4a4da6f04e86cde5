"""Per-position sampled softmax at Beauty scale, fused against unfused: seconds and peak memory
for one forward + backward over 6,400 positions (a batch of 128 full 50-item windows), d = 256,
K = 256 negatives each, 12,101 items, one thread.

    .venv/bin/python benchmarks/scripts/sampled_ce_speed.py fused     # recsys.models.seq_losses.sampled_ce
    .venv/bin/python benchmarks/scripts/sampled_ce_speed.py unfused   # gather + einsum + F.cross_entropy

One mode per process, so that the peak RSS printed is that mode's alone.
"""

from __future__ import annotations

import resource
import sys
import time

import torch
import torch.nn.functional as F

from recsys.models.seq_losses import sampled_ce


def unfused(h, target, w, neg):
    s_pos = (h * w[target]).sum(-1)
    s_neg = torch.einsum("nd,nkd->nk", h, w[neg]).masked_fill(neg == target[:, None], float("-inf"))
    logits = torch.cat([s_pos[:, None], s_neg], 1)
    return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long))


def main(mode: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    N, K, n, d = 6400, 256, 12101, 256
    h = torch.randn(N, d, requires_grad=True)
    w = (torch.randn(n, d) * 0.05).requires_grad_()
    target, neg = torch.randint(n, (N,)), torch.randint(n, (N, K))
    loss = sampled_ce if mode == "fused" else unfused
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss(h, target, w, neg).backward()
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{mode}: {min(times):.2f} s per forward+backward (best of 3), peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fused")
