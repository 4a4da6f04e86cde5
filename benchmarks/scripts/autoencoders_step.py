"""Time and memory of Mult-VAE / Mult-DAE training and full-ranking evaluation at ML-20M's shape.

Builds a random training CSR of ML-20M's size after the paper's preprocessing (116,677 training
users, 20,108 items, 66 positives per user on average, so 7.7M pairs; pass --items 26744 for the
raw catalogue) directly as arrays (no pandas), then runs the same code paths as a training run:
``UserLoader`` batches of ``--batch`` users, ``model.loss`` + Adam step, and evaluation chunks of
``--eval-batch`` users scored over all items with history masked and the top 100 taken.

    python benchmarks/scripts/autoencoders_step.py --model multvae --steps 20
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from recsys.data.loaders import RowStore, UserLoader
from recsys.metrics.ranking import ranking_metrics, topk_hits
from recsys.models.autoencoders import MultDAE, MultVAE


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["multvae", "multdae"], default="multvae")
    p.add_argument("--users", type=int, default=116_677)
    p.add_argument("--items", type=int, default=20_108)
    p.add_argument("--mean-length", type=float, default=66.0)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-chunks", type=int, default=3)
    p.add_argument("--fused", action="store_true", help="Adam(fused=True), as the *_ml20m configs")
    a = p.parse_args()

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.geometric(1 / a.mean_length, a.users), 5, a.items // 2)
    indptr = np.zeros(a.users + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    # Zipf-like popular items; duplicates inside a row are harmless for timing (dense() sets 1)
    items = np.minimum(np.floor(np.expm1(rng.random(indptr[-1]) * np.log1p(a.items))), a.items - 1)
    store = RowStore(torch.as_tensor(indptr), torch.as_tensor(items.astype(np.int64)))
    print(
        f"users {a.users}, items {a.items}, pairs {indptr[-1]:,}, threads {torch.get_num_threads()}"
    )

    cls = MultVAE if a.model == "multvae" else MultDAE
    dims = [600, 200] if a.model == "multvae" else [200]
    model = cls(num_users=a.users, num_items=a.items, hidden_dims=dims)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if a.fused else {}))
    loader = UserLoader(store, a.batch, seed=0)
    model.train()
    times, cpu = [], []
    for i, batch in enumerate(loader):
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        model.loss(batch)["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if i + 1 >= a.steps:
            break
    per_batch = float(np.median(times[1:])) if len(times) > 1 else times[0]
    per_batch_cpu = float(np.median(cpu[1:])) if len(cpu) > 1 else cpu[0]
    print(
        f"train: {per_batch:.3f} s/batch wall, {per_batch_cpu:.3f} s CPU (median of "
        f"{len(times) - 1}), {len(loader)} batches/epoch -> {per_batch * len(loader):.0f} s/epoch "
        f"wall, {per_batch_cpu * len(loader):.0f} s CPU"
    )

    model.eval()
    ev, ev_cpu = [], []
    users = torch.arange(a.users)
    for c in range(a.eval_chunks):
        t, tc = time.perf_counter(), time.process_time()
        ub = store.users(users[c * a.eval_batch : (c + 1) * a.eval_batch])
        scores = model.score(ub).clone()
        scores[ub.rows(), ub.items] = float("-inf")
        target = torch.zeros_like(scores, dtype=torch.bool)
        target[:, :50] = True  # stand-in targets: the metric arithmetic is what is timed
        ranking_metrics(
            topk_hits(scores, target, 100), target.sum(1), [20, 50, 100], ["ndcg", "recall_capped"]
        )
        ev.append(time.perf_counter() - t)
        ev_cpu.append(time.process_time() - tc)
    per_chunk, per_chunk_cpu = float(np.median(ev)), float(np.median(ev_cpu))
    print(
        f"eval: {per_chunk:.3f} s wall, {per_chunk_cpu:.3f} s CPU per {a.eval_batch} users -> "
        f"{per_chunk * 10_000 / a.eval_batch:.0f} s wall for 10,000 held-out users"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
