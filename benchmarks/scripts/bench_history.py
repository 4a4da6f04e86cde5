"""CPU time of one SASRec history request in-process, eager vs the traced encoder.

Measures what the scoring thread of ``recsys-serve`` spends per history request (and
``recsys.load(...).recommend_history``), by ``time.thread_time`` (CPU time, so other work on a
shared machine counts less than in wall time), with the two paths alternated in one process:

- ``recommend_history``: the Python API for one history (ids in, top-k ids out);
- ``answer B=n``: the service's batched path (``Served.answer``, what one micro-batch of ``n``
  history jobs costs the scoring thread), per request.

Histories are drawn as ``bench_serve`` draws them: a uniformly chosen user's most recent 1-50
items. Run with ``OMP_NUM_THREADS=1``::

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.bench_history outputs/bench-serve/sasrec
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=400, help="requests per measurement")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from recsys.serving.artifact import load
    from recsys.serving.service import ScoreJob, Served

    torch.set_num_threads(1)
    rec = load(args.artifact)
    rec._traced_histories()
    traced = rec._traced or None
    served = Served(rec=rec, path=rec.dir, digest="", load_seconds=0.0, loaded_at=0.0)
    rng = np.random.default_rng(args.seed)
    lengths = np.diff(rec.indptr)
    users = rng.choice(np.flatnonzero(lengths > 0), 4096)
    hists = []
    for u in users:
        h = rec.history(int(u))
        hists.append(h[-int(rng.integers(1, min(50, len(h)) + 1)) :].astype(np.int64))
    ext = [rec.item_ids[h].tolist() for h in hists]
    batches = [int(b) for b in args.batches.split(",")]

    def api(n: int) -> float:
        t = time.thread_time()
        for i in range(n):
            rec.recommend_history(ext[i % len(ext)], k=10)
        return (time.thread_time() - t) / n * 1e3

    def answer(b: int, n: int) -> float:
        t = time.thread_time()
        for i in range(n // b):
            s = (i * b) % (len(hists) - b)
            served.answer([ScoreJob(served, -1, h, 10, True) for h in hists[s : s + b]])
        return (time.thread_time() - t) / (n // b * b) * 1e3

    paths = {"eager": False, "traced": traced} if traced is not None else {"eager": False}
    results: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for _ in range(args.rounds):
        for name, value in paths.items():  # alternated: the machine's drift hits both
            rec._traced = value
            api(20)  # warm
            results[name].setdefault("recommend_history", []).append(api(args.calls))
            for b in batches:
                results[name].setdefault(f"answer B={b}", []).append(answer(b, args.calls))
    rec._traced = traced if traced is not None else False
    print(f"history path: {rec.history_path}; ms of CPU per request, median of {args.rounds}")
    summary = {
        p: {k: round(float(np.median(v)), 3) for k, v in r.items()} for p, r in results.items()
    }
    for p, r in summary.items():
        print(p, json.dumps(r))


if __name__ == "__main__":
    main()
