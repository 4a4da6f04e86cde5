"""Recall@k and latency of the approximate item index (:mod:`recsys.serving.ann`) against exact
scoring, on exported artifacts of dot-product models (MF, ...), one thread.

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.ann_recall ARTIFACT [ARTIFACT ...] \
        [--ef 32,64,128,256] [--k 10] [--users 0] [--latency-queries 500] \
        [--commands commands.txt] [--out ann_recall.json]

For each artifact: its item vectors and every known user's query vector through the artifact's
own methods (``_item_table``, ``_user_vectors``), each user's seen items excluded as serving
excludes them; the exact top-k (:func:`exact_search`) as the reference, checked against
``recommend`` on some users. Then for each way of doing MIPS with HNSW, the build time and, for
each ef_search, recall@k over all users (``--users N``: a fixed sample of N) and the time per
query: one query a call (median of ``--latency-queries``) and batches of 256. Exact scoring is
timed the same way, with a numpy and a torch matmul + top-k. The variants:

- ``inner-product``: :class:`InnerProductIndex` as shipped (faiss' ``METRIC_INNER_PRODUCT``
  graph on the vectors as they are);
- ``l2-reduction``: the same class on the reduction to L2 search (one extra coordinate
  ``sqrt(max_norm² - |v|²)`` on items, 0 on queries; Bachrach et al., RecSys 2014), defined
  here only, for the comparison.

``hub_share``: the share of base-layer graph edges that point to the 1% of items of largest
norm (1% if the graph ignored norms). ``--commands``: a text file of the command lines that made
the artifacts, written first in the JSON with this script's own command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import recsys
from benchmarks.runner.machine import cpu_name
from recsys.serving.ann import InnerProductIndex, _one_thread, exact_search, recall_at_k

BATCH = 256


class ReducedToL2(InnerProductIndex):
    """The alternative: MIPS reduced to L2 nearest-neighbour search (Bachrach et al., RecSys
    2014): items get one more coordinate ``sqrt(max_norm² - |v|²)``, queries a 0, so that
    ``|q' - v'|² = |q|² + max_norm² - 2 q·v``; an L2 HNSW graph on the augmented items."""

    def _build(self, faiss: Any, items: np.ndarray) -> Any:
        norms2 = np.einsum("id,id->i", items, items, dtype=np.float64)
        extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0))  # (I,)
        index = faiss.IndexHNSWFlat(items.shape[1] + 1, self.m)  # L2
        index.hnsw.efConstruction = self.ef_construction
        with _one_thread(faiss):
            index.add(np.hstack([items, extra[:, None].astype(np.float32)]))
        return index

    def _query(self, queries: np.ndarray) -> np.ndarray:
        return np.hstack([queries, np.zeros((len(queries), 1), np.float32)])


VARIANTS = {"inner-product": InnerProductIndex, "l2-reduction": ReducedToL2}


def hub_share(index: InnerProductIndex, norms: np.ndarray) -> float:
    """Share of base-layer edges pointing to the top 1% of items by norm."""
    import faiss

    hnsw = index._index.hnsw
    offsets = faiss.vector_to_array(hnsw.offsets)[:-1].astype(np.int64)
    neighbors = faiss.vector_to_array(hnsw.neighbors)
    base = hnsw.nb_neighbors(0)
    edges = neighbors[offsets[:, None] + np.arange(base)]  # (I, 2m) base layer, -1: unused
    edges = edges[edges >= 0]
    top = np.argsort(-norms)[: max(1, len(norms) // 100)]
    return float(np.isin(edges, top).mean())


def per_query(fn, n: int) -> float:
    """Median seconds of ``fn(i)`` over i < n (after one warm-up call)."""
    fn(0)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batched(fn, n: int) -> float:
    """Seconds per query of ``fn(start, stop)`` over batches of BATCH up to n (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            fn(s, min(s + BATCH, n))
        best = min(best, time.perf_counter() - t0)
    return best / n


def exact_numpy(items: np.ndarray, q: np.ndarray, seen: list[np.ndarray], k: int) -> None:
    """Serving's exact path in numpy: float32 matmul, seen items masked, top-k sorted."""
    s = q @ items.T  # (b, I)
    for j, h in enumerate(seen):
        s[j, h] = -np.inf
    top = np.argpartition(-s, k, axis=1)[:, :k]
    np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1), 1)


def exact_torch(items: torch.Tensor, q: torch.Tensor, seen: list[np.ndarray], k: int) -> None:
    """The same in torch: matmul, masked, ``topk``."""
    s = q @ items.T
    for j, h in enumerate(seen):
        s[j, torch.from_numpy(h)] = -torch.inf
    torch.topk(s, k, dim=1)


def measure_variant(
    name: str,
    cls: type[InnerProductIndex],
    items: np.ndarray,
    queries: np.ndarray,
    seen: list[np.ndarray],
    exact_ids: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Build time, hub share and, per ef_search, recall and time per query of one variant."""
    n, k, lat = len(queries), args.k, min(args.latency_queries, len(queries))
    t0 = time.perf_counter()
    index = cls(items, m=args.m, ef_construction=args.ef_construction)
    build = time.perf_counter() - t0
    # candidates search() asks of faiss: k + seen, rounded up to a power of two (at most I)
    need = np.maximum(np.minimum([k + len(h) for h in seen], len(items)), 1)
    width = np.minimum(2 ** np.ceil(np.log2(need)).astype(int), len(items)).tolist()
    rows = []
    for ef in args.ef:
        index.ef_search = ef
        ids, _ = index.search(queries, k, seen)
        rows.append(
            {
                "ef_search": ef,
                f"recall@{k}": recall_at_k(ids, exact_ids),
                "exact_rows": float((ids == exact_ids).all(1).mean()),
                "query_us": 1e6
                * per_query(lambda i: index.search(queries[i : i + 1], k, seen[i : i + 1]), lat),
                # the faiss call alone: the rest of query_us is exclusion and exact rescoring
                "faiss_query_us": 1e6
                * per_query(
                    lambda i: index._index.search(index._query(queries[i : i + 1]), width[i]), lat
                ),
                "batch_us": 1e6 * batched(lambda s, e: index.search(queries[s:e], k, seen[s:e]), n),
            }
        )
    norms = np.linalg.norm(items, axis=1)
    return {"variant": name, "build_s": build, "hub_share": hub_share(index, norms), "ef": rows}


def measure(path: str, args: argparse.Namespace) -> dict[str, Any]:
    art = recsys.load(path)
    items = art._item_table().numpy()  # (I, d), checked to reproduce the model's score
    num, dim = items.shape
    users = np.arange(art.num_users)
    if 0 < args.users < art.num_users:
        users = np.sort(np.random.default_rng(0).choice(art.num_users, args.users, replace=False))
    seen = [art.history(int(u)).astype(np.int64) for u in users]
    t0 = time.perf_counter()
    queries = art._user_vectors(users.tolist(), seen).numpy()  # (n, d)
    t_vectors = time.perf_counter() - t0
    n, k = len(users), args.k

    t0 = time.perf_counter()
    exact_ids, _ = exact_search(items, queries, k, seen)
    t_reference = time.perf_counter() - t0
    # the reference is the artifact's own answer (float32 model scores: near-ties may differ)
    check = users[:200]
    rec = art.recommend(art.user_ids[check].tolist(), k=k)
    agree = np.mean([r["items"] == art.item_ids[exact_ids[j]].tolist() for j, r in enumerate(rec)])

    lat = min(args.latency_queries, n)
    items_t, queries_t = torch.from_numpy(items), torch.from_numpy(queries)
    exact_rows = [
        {
            "method": "exact numpy",
            "query_us": 1e6
            * per_query(lambda i: exact_numpy(items, queries[i : i + 1], seen[i : i + 1], k), lat),
            "batch_us": 1e6
            * batched(lambda s, e: exact_numpy(items, queries[s:e], seen[s:e], k), n),
        },
        {
            "method": "exact torch",
            "query_us": 1e6
            * per_query(
                lambda i: exact_torch(items_t, queries_t[i : i + 1], seen[i : i + 1], k), lat
            ),
            "batch_us": 1e6
            * batched(lambda s, e: exact_torch(items_t, queries_t[s:e], seen[s:e], k), n),
        },
    ]

    norms = np.linalg.norm(items, axis=1)
    variants = [
        measure_variant(name, cls, items, queries, seen, exact_ids, args)
        for name, cls in VARIANTS.items()
    ]
    metrics_file = Path(path) / "metrics.json"
    test = json.loads(metrics_file.read_text()).get("test", {}) if metrics_file.is_file() else {}
    return {
        "artifact": Path(path).name,
        "model": art.meta["model"]["_target_"],
        "model_test": {m: test[m] for m in (f"ndcg@{k}", f"recall@{k}") if m in test},
        "items": num,
        "dim": dim,
        "users": n,
        "k": k,
        "seen_per_user_median": float(np.median([len(h) for h in seen])),
        "item_norms": dict(
            zip(("min", "median", "max"), np.percentile(norms, [0, 50, 100]).tolist(), strict=True)
        ),
        "user_vectors_s": t_vectors,
        "reference_s": t_reference,
        "reference_equals_recommend": float(agree),
        "latency_queries": lat,
        "exact": exact_rows,
        "hnsw": {"m": args.m, "ef_construction": args.ef_construction, "variants": variants},
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| artifact | method | ef_search | recall@k | rows = exact | build s "
        "| µs/query, 1 a call (faiss alone) | µs/query, batch 256 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for e in r["exact"]:
            lines.append(
                f"| {r['artifact']} | {e['method']} | | 1 | 1 | | {e['query_us']:.0f} "
                f"| {e['batch_us']:.0f} |"
            )
        for v in r["hnsw"]["variants"]:
            for e in v["ef"]:
                recall = e["recall@" + str(r["k"])]
                lines.append(
                    f"| {r['artifact']} | hnsw {v['variant']} | {e['ef_search']} | {recall:.4f} "
                    f"| {e['exact_rows']:.3f} | {v['build_s']:.1f} "
                    f"| {e['query_us']:.0f} ({e['faiss_query_us']:.0f}) | {e['batch_us']:.0f} |"
                )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", help="artifact directories (recsys-export)")
    p.add_argument(
        "--ef", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64, 128, 256]
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--users", type=int, default=0, help="sample this many users (0: all)")
    p.add_argument("--latency-queries", type=int, default=500)
    p.add_argument("--commands", help="text file: the command lines that made the artifacts")
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args()

    import faiss

    torch.set_num_threads(1)  # one thread for every method: latency per core
    faiss.omp_set_num_threads(1)
    load_start = os.getloadavg()[0]
    results = [measure(a, args) for a in args.artifacts]
    print(table(results))
    for r in results:
        print(
            f"{r['artifact']}: reference = recommend() on "
            f"{r['reference_equals_recommend']:.0%} of the first 200 users; hub_share "
            + ", ".join(f"{v['variant']} {v['hub_share']:.3f}" for v in r["hnsw"]["variants"])
        )
    if args.out:
        commands = Path(args.commands).read_text().splitlines() if args.commands else []
        threads = os.environ.get("OMP_NUM_THREADS")
        env = [f"OMP_NUM_THREADS={threads}"] if threads else []
        commands.append(shlex.join([*env, "python", *sys.argv]))
        doc = {
            "commands": [c for c in commands if c.strip()],
            "machine": {
                "cpu": cpu_name(),
                "cores": os.cpu_count(),
                # other work on the machine: latencies are noisier the higher this is
                "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
                "python": platform.python_version(),
                "numpy": np.__version__,
                "torch": torch.__version__,
                "faiss": faiss.__version__,
                "threads": 1,
            },
            "results": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
