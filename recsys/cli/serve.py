"""``recsys-serve``: recommendations over HTTP from an exported artifact (FastAPI on uvicorn).

    recsys-export outputs/<run> --out artifacts/mf
    recsys-serve artifacts/mf --port 8000
    curl 'http://127.0.0.1:8000/v1/recommend?user=42&k=10'

Routes: ``GET /health``; ``GET /v1/recommend?user=&k=&exclude_seen=``; ``POST /v1/recommend``
``{"users": [...], "k": 10}``; ``POST /v1/recommend/history`` ``{"items": [...], "k": 10}`` (a
session or a new customer; ``"attributes"`` and ``"new_items"`` for models with features);
``GET /v1/similar?item=&k=``; ``POST /v1/similar`` ``{"attributes": {...}}``; ``GET /metrics``
(Prometheus); ``POST /admin/reload``; API docs at ``/docs``. Answers equal ``recsys.load(...)``'s.

The artifact is opened the safe way (``recsys.load``: verified, no code from the file runs; with
``$RECSYS_ARTIFACT_KEY`` set, only a valid signature is accepted). With ``$RECSYS_SERVE_TOKEN``
set (``--token-env`` names another variable), every route but ``/health`` needs
``Authorization: Bearer <token>``. Hot reload: SIGHUP or ``POST /admin/reload`` reads the
artifact path (and ``--opt-out``) again and swaps the new model in; a corrupt or unverifiable
artifact is refused and the old one keeps serving. Deploy by exporting to a new folder and
repointing a symlink given as ARTIFACT (``ln -sfn``), then reload.

Concurrent requests are micro-batched: the jobs that queued while the previous scoring call ran
(up to ``--max-batch``; ``--max-wait-ms`` waits that long for more) become one call in a worker
thread, off the event loop. The access log
holds method, path, status and time, never a user or item id. A bad artifact or flag: one line on
stderr and exit status 2, before anything listens.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from recsys.cli import EXIT_USER_ERROR, Parser
from recsys.errors import RecsysError


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="recsys-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "artifact", help="artifact directory written by recsys-export (or a symlink)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes (default 1; each loads the model)"
    )
    parser.add_argument(
        "--fallback",
        choices=["popular"],
        help="answer unknown (and opted-out) users with the most popular items instead of 404",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "eager", "onnx", "torchscript"],
        help="scorer (default auto = eager: no code from the artifact runs; torchscript runs "
        "code stored in it: trusted artifacts only)",
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PKG",
        help="a package besides recsys whose models the artifact may name (repeatable)",
    )
    parser.add_argument(
        "--token-env",
        default="RECSYS_SERVE_TOKEN",
        help="environment variable holding the bearer token (default RECSYS_SERVE_TOKEN; "
        "unset: no token needed)",
    )
    parser.add_argument(
        "--opt-out",
        metavar="FILE",
        help="user ids never served a personal answer, one per line (# comments); read again on "
        "reload",
    )
    parser.add_argument(
        "--max-batch", type=int, default=64, help="jobs per scoring call (default 64)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="longest wait for more jobs after the first (default 0: the jobs that queued while "
        "the previous call ran; a wait adds to every lone request)",
    )
    parser.add_argument("--max-k", type=int, default=1000, help="largest k accepted (default 1000)")
    parser.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)"
    )
    parser.add_argument(
        "--ann",
        default="none",
        choices=["none", "hnsw"],
        help="hnsw: approximate top-k (faiss HNSW) for dot-product models; default exact",
    )
    parser.add_argument(
        "--ann-ef", type=int, default=128, help="HNSW search breadth (default 128: recall vs speed)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (default 1)"
    )
    parser.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="score histories with the eager model instead of the fast path built from it at "
        "load (SASRec: a closed form for one block, else a traced graph; for comparisons: the "
        "answers are the same)",
    )
    parser.add_argument(
        "--no-screen",
        dest="screen",
        action="store_false",
        help="rank by the whole float32 product instead of the exact int8 screen that "
        "dot-product models with a large catalogue use (for comparisons: the same top-k)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default info (one access line per request: method, path, status, time)",
    )
    args = parser.parse_args(argv)
    try:
        _serve(args)
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def _serve(args) -> None:
    try:
        import uvicorn
    except ImportError:
        raise RecsysError(
            "recsys-serve needs fastapi and uvicorn: pip install -e '.[serve]'"
        ) from None
    from recsys.serving.artifact import signature_note
    from recsys.serving.service import (
        SETTINGS_ENV,
        ServeSettings,
        create_app,
        load_served,
        set_threads,
    )

    settings = ServeSettings(
        artifact=args.artifact,
        backend=args.backend,
        trust=tuple(args.trust),
        fallback=args.fallback,
        token_env=args.token_env,
        opt_out=args.opt_out,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_k=args.max_k,
        max_body_bytes=args.max_body_bytes,
        ann=args.ann,
        ann_ef=args.ann_ef,
        threads=args.threads,
        workers=args.workers,
        trace=args.trace,
        screen=args.screen,
    ).check()
    if not 0 <= args.port <= 65535:
        raise RecsysError(f"--port must be 0..65535, got {args.port}")
    set_threads(settings.threads)
    served = load_served(settings)  # refuse a bad artifact before anything listens
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recsys.serve").setLevel(level)
    sock = _listen(args.host, args.port)  # bound here: the line below names the real port
    port = sock.getsockname()[1]
    token = "token required" if os.environ.get(settings.token_env) else "no token"
    rec = served.rec
    histories = f"; histories: {rec.history_path}" if rec.supports_history else ""
    histories += f"; ranking: {rec.scan_path}"
    print(
        f"serving {served.model} ({rec.num_items} items, {rec.num_users} users, "
        f"digest {served.digest[:12]}, {token}; {signature_note(rec.signature)}{histories}) "
        f"on http://{args.host}:{port} (docs at /docs)",
        file=sys.stderr,
        flush=True,
    )
    common = dict(
        log_level=args.log_level,
        access_log=False,  # uvicorn's access log has query strings (ids): ours has none
        timeout_graceful_shutdown=10,
    )
    if settings.workers == 1:
        config = uvicorn.Config(create_app(settings, served), **common)
        uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    del served, rec  # each worker loads its own copy
    os.environ[SETTINGS_ENV] = settings.to_json()
    config = uvicorn.Config(
        "recsys.serving.service:app_from_env",
        factory=True,
        workers=settings.workers,
        timeout_worker_healthcheck=120,  # a worker imports torch and loads the model first
        **common,
    )
    Multiprocess(config, sockets=[sock]).run()  # SIGHUP: new workers replace the old ones


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto TCP: asyncio then sets TCP_NODELAY on each connection (with proto 0 it does not,
    # and a keep-alive client waits out a 40 ms delayed ACK on every answer)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RecsysError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    main()
