"""The floor of ``make bench-serve``: recsys-serve's routes on the same stack, answering a constant.

A bare FastAPI app on uvicorn (one process; recsys-serve's uvicorn settings: no access log,
10 s graceful shutdown) that parses the same inputs as recsys-serve (query parameters, a JSON
body validated by a pydantic model) and answers a constant top-10 of the same shape, encoded
the same way (``json.dumps`` into a ``Response``), without scoring anything and without
recsys-serve's middleware (token, body limit, metrics). Its handlers are ``async def`` (no hop
to a worker thread), so its latency is what HTTP parsing, routing, validation and JSON encoding
cost on the machine: no model can answer faster through this stack. ``bench_serve.py`` starts it beside the real server; by hand:

    .venv/bin/python benchmarks/scripts/floor_app.py --port 8001
    curl '127.0.0.1:8001/v1/recommend?user=2&k=10'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel, ConfigDict

K = 10
_ITEMS = [str(i) for i in range(1, K + 1)]
_SCORES = [round(1.0 - i / 100, 2) for i in range(K)]


class HistoryRequest(BaseModel):
    """Body of ``POST /v1/recommend/history``: a history of external item ids, newest last."""

    model_config = ConfigDict(extra="forbid")
    items: list[str | int]
    k: int = K
    exclude_seen: bool = True


def _json(content: Any) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")).encode(), media_type="application/json"
    )


app = FastAPI(title="recsys-serve floor", docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/health")
async def health() -> Response:
    """Ready: the same keys as recsys-serve's health answer."""
    return _json({"model": "floor", "digest": "", "items": K})


@app.get("/v1/recommend")
async def recommend(user: str, k: int = K, exclude_seen: bool = True) -> Response:
    """The constant top-10, whatever the user."""
    return _json({"user": user, "items": _ITEMS, "scores": _SCORES})


@app.post("/v1/recommend/history")
async def recommend_history(body: HistoryRequest) -> Response:
    """The constant top-10, whatever the history."""
    return _json({"user": None, "items": _ITEMS, "scores": _SCORES})


@app.get("/v1/similar")
async def similar(item: str, k: int = K) -> Response:
    """The constant top-10, whatever the item."""
    return _json({"item": item, "items": _ITEMS, "scores": _SCORES})


def main(argv: list[str] | None = None) -> None:
    """Serve the floor app until interrupted (SIGINT / SIGTERM)."""
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    print(f"serving floor on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
