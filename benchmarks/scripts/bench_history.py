"""CPU time of one SASRec history request in-process, eager vs the traced encoder.

Measures what the scoring thread of ``recsys-serve`` spends per history request (and
``recsys.load(...).recommend_history``), by ``time.thread_time`` (CPU time, so other work on a
shared machine counts less than in wall time), with the two paths alternated in one process:

- ``recommend_history``: the Python API for one history (ids in, top-k ids out);
- ``answer B=n``: the service's batched path (``Served.answer``, what one micro-batch of ``n``
  history jobs costs the scoring thread), per request.

``--parts`` also times one call's parts on the traced path: the encoder alone, the encoder
followed by the item product (the product's cost with the table partly out of cache, as in
serving), the product repeated (warm), top-10, and ``score()`` (encoder + product + its own
Python).

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
    p.add_argument(
        "--parts",
        action="store_true",
        help="also time the traced call's parts: encoder, item product, top-10, score()",
    )
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
    if args.parts and traced is not None:  # where one B=1 scoring call goes (traced path)
        table = rec._dot_table()
        q = traced([hists[0]])
        scores = (q @ table)[0]
        parts = {
            "encoder": lambda i: traced([hists[i]]),
            "encoder + product": lambda i: traced([hists[i]]) @ table,
            "product (warm)": lambda i: q @ table,
            "top-10": lambda i: rec._top(scores, hists[i], 10),
            "score()": lambda i: rec.score([-1], [hists[i]]),
        }
        split: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, fn in parts.items():
                t = time.thread_time()
                for i in range(args.calls):
                    fn(i % len(hists))
                split.setdefault(name, []).append((time.thread_time() - t) / args.calls * 1e3)
        print(
            "parts, ms of CPU per call:",
            json.dumps({k: round(float(np.median(v)), 3) for k, v in split.items()}),
        )
    print(f"history path: {rec.history_path}; ms of CPU per request, median of {args.rounds}")
    summary = {
        p: {k: round(float(np.median(v)), 3) for k, v in r.items()} for p, r in results.items()
    }
    for p, r in summary.items():
        print(p, json.dumps(r))


if __name__ == "__main__":
    main()
