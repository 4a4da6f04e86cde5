"""CPU time per request of recsys-serve's whole ASGI app, called in-process without sockets.

What it measures: the process CPU time (``time.process_time``: every thread, so the scoring
thread counts too) of ``--calls`` requests sent one after another straight into the ASGI app
(``app(scope, receive, send)`` on an event loop, uvloop when installed, as uvicorn picks it),
divided by their number: routing, validation, the middleware, the hand-off to the scoring thread
and back, scoring and the JSON answer; no socket, no HTTP parsing. CPU time rather than wall
time, so other jobs on a shared machine count much less. The floor app
(``benchmarks/scripts/floor_app.py``, a constant answer) is measured in the same process,
alternated with recsys round by round.

Requests are drawn as ``bench_serve`` draws them (``make_requests``): known users for
``GET /v1/recommend`` on a dot-product artifact without history scoring (MF), histories of 1-50
items for ``POST /v1/recommend/history`` on a history model (SASRec)::

    OMP_NUM_THREADS=1 python -m benchmarks.scripts.bench_asgi outputs/bench-serve/sasrec
    OMP_NUM_THREADS=1 python -m benchmarks.scripts.bench_asgi outputs/bench-serve/mf --profile 20

``--profile N`` prints cProfile's N most expensive functions (by own time and by cumulative
time) over one extra round of recsys requests.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import io
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _scope(req: dict[str, str]) -> tuple[dict, bytes]:
    path, _, query = req["path"].partition("?")
    body = req.get("body", "").encode()
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")]
    if req["method"] == "POST":
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": req["method"],
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    return scope, body


async def _call(app, scope: dict, body: bytes) -> tuple[int, bytes]:
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # a disconnect never comes
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _round(app, prepared, calls: int, concurrency: int, offset: int) -> tuple[float, float]:
    """Process CPU ms per request over ``calls`` requests, ``concurrency`` in flight, and the
    event loop's (this thread's) share of it."""
    n = len(prepared)

    async def one(i: int) -> None:
        status, payload = await _call(app, *prepared[(offset + i) % n])
        if status != 200:
            raise RuntimeError(f"status {status}: {payload[:300]!r}")

    t, loop_t = time.process_time(), time.thread_time()
    for s in range(0, calls, concurrency):
        if concurrency == 1:
            await one(s)
        else:
            await asyncio.gather(*(one(s + j) for j in range(min(concurrency, calls - s))))
    return (
        (time.process_time() - t) / calls * 1e3,
        (time.thread_time() - loop_t) / calls * 1e3,
    )


def _floor_app():
    spec = importlib.util.spec_from_file_location("floor_app", HERE / "floor_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


async def main_async(args) -> dict:
    import torch

    from benchmarks.scripts.bench_serve import SCENARIOS, make_requests
    from recsys.serving.service import ServeSettings, create_app

    torch.set_num_threads(1)
    artifact = Path(args.artifact)
    meta = json.loads((artifact / "artifact.json").read_text())
    scenario = SCENARIOS["sasrec" if meta.get("supports_history") else "mf"]
    requests = make_requests(scenario, artifact, 4096, args.seed)
    prepared = [_scope(r) for r in requests]
    app = create_app(ServeSettings(artifact=str(artifact)))
    service = app.state.service
    await service.start()
    apps = {"recsys": app, "floor": _floor_app()}
    for a in apps.values():  # warm: the first call builds the middleware stack
        await _round(a, prepared, 50, 1, 0)
    results: dict[str, list[float]] = {name: [] for name in apps}
    loop_share: dict[str, list[float]] = {name: [] for name in apps}
    for r in range(args.rounds):
        for name, a in apps.items():
            total, loop = await _round(a, prepared, args.calls, args.concurrency, r * args.calls)
            results[name].append(total)
            loop_share[name].append(loop)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        await _round(app, prepared, args.calls, args.concurrency, 0)
        prof.disable()
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(key).print_stats(args.profile)
            print(out.getvalue(), file=sys.stderr)
    await service.stop()
    return {
        "artifact": str(artifact),
        "endpoint": requests[0]["method"] + " " + requests[0]["path"].split("?")[0],
        "concurrency": args.concurrency,
        "calls": args.calls,
        "rounds": args.rounds,
        "ms_cpu_per_request_median": {k: round(float(np.median(v)), 3) for k, v in results.items()},
        "ms_cpu_per_request": {k: [round(x, 3) for x in v] for k, v in results.items()},
        "ms_cpu_event_loop_median": {
            k: round(float(np.median(v)), 3) for k, v in loop_share.items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=1000, help="requests per round")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile's top N")
    args = p.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(main_async(args))))


if __name__ == "__main__":
    main()
