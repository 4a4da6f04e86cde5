"""CPU time of one SASRec history request in-process: eager, traced and closed-form encoders.

Measures what the scoring thread of ``recsys-serve`` spends per history request (and
``recsys.load(...).recommend_history``), by ``time.thread_time`` (CPU time, so other work on a
shared machine counts less than in wall time), with the paths alternated in one process (eager,
and each fast path of :mod:`recsys.serving.history` that reproduces the model):

- ``recommend_history``: the Python API for one history (ids in, top-k ids out);
- ``answer B=n``: the service's batched path (``Served.answer``, what one micro-batch of ``n``
  history jobs costs the scoring thread), per request.

``--gap-ms G`` spins G ms between calls (untimed), as the service's requests come a few ms apart:
the weights and code then leave the caches between calls, which the back-to-back default hides.

``--parts`` also times one call's parts on the served path: the encoder alone, the encoder
followed by the item product (the product's cost with the table partly out of cache, as in
serving), the product alone (the same query each call), top-10, and ``score()`` (encoder +
product + its own Python).

Histories are drawn as ``bench_serve`` draws them: a uniformly chosen user's most recent 1-50
items. Run with ``OMP_NUM_THREADS=1``::

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.bench_history outputs/bench-serve/sasrec
    OMP_NUM_THREADS=1 python -m benchmarks.scripts.bench_history outputs/bench-serve/sasrec \
        --gap-ms 4 --batches 1 --parts
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
    p.add_argument("--gap-ms", type=float, default=0.0, help="spin this long between calls")
    p.add_argument(
        "--parts",
        action="store_true",
        help="also time the served path's parts: encoder, item product, top-10, score()",
    )
    args = p.parse_args()

    import torch

    from recsys.serving.artifact import load
    from recsys.serving.history import OneBlockHistories, TracedHistories
    from recsys.serving.service import ScoreJob, Served

    torch.set_num_threads(1)
    rec = load(args.artifact)
    served_path = rec._history_encoder()  # the service's path (rec.history_path)
    model = rec._eager()
    probes = [(u, rec.history(u)) for u in np.flatnonzero(np.diff(rec.indptr) > 0)[:24]]
    fast = {
        "traced": TracedHistories.of(model, probes)[0],
        "closed form": OneBlockHistories.of(model, probes)[0],
    }
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

    gap = args.gap_ms / 1e3

    def timed(fn, args: list) -> float:
        """ms of CPU per ``fn(a)`` call, with ``--gap-ms`` spun (untimed) before each."""
        total = 0.0
        for a in args:
            if gap:
                end = time.perf_counter() + gap
                while time.perf_counter() < end:
                    pass
            t = time.thread_time()
            fn(a)
            total += time.thread_time() - t
        return total / len(args) * 1e3

    def api(n: int) -> float:
        return timed(
            lambda e: rec.recommend_history(e, k=10), [ext[i % len(ext)] for i in range(n)]
        )

    def answer(b: int, n: int) -> float:
        def batch(s: int) -> None:
            served.answer([ScoreJob(served, -1, h, 10, True) for h in hists[s : s + b]])

        return timed(batch, [(i * b) % (len(hists) - b) for i in range(n // b)]) / b

    paths = {"eager": False, **{k: v for k, v in fast.items() if v is not None}}
    results: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    for _ in range(args.rounds):
        for name, value in paths.items():  # alternated: the machine's drift hits both
            rec._histories = value
            api(20)  # warm
            results[name].setdefault("recommend_history", []).append(api(args.calls))
            for b in batches:
                results[name].setdefault(f"answer B={b}", []).append(answer(b, args.calls))
    rec._histories = served_path if served_path is not None else False
    if args.parts and served_path is not None:  # where one B=1 scoring call goes
        table = rec._dot_table()
        q = served_path([hists[0]])
        scores = (q @ table)[0]
        parts = {
            "encoder": lambda i: served_path([hists[i]]),
            "encoder + product": lambda i: served_path([hists[i]]) @ table,
            "product alone": lambda i: q @ table,
            "top-10": lambda i: rec._top(scores, hists[i], 10),
            "score()": lambda i: rec.score([-1], [hists[i]]),
        }
        split: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, fn in parts.items():
                rows = [i % len(hists) for i in range(args.calls)]
                split.setdefault(name, []).append(timed(fn, rows))
        print(
            "parts, ms of CPU per call:",
            json.dumps({k: round(float(np.median(v)), 3) for k, v in split.items()}),
        )
    print(
        f"served path: {rec.history_path}; ms of CPU per request, median of {args.rounds}, "
        f"{args.gap_ms} ms spun between calls"
    )
    summary = {
        p: {k: round(float(np.median(v)), 3) for k, v in r.items()} for p, r in results.items()
    }
    for p, r in summary.items():
        print(p, json.dumps(r))


if __name__ == "__main__":
    main()
