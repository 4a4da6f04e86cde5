"""The HTTP service behind ``recsys-serve``: a FastAPI app over one exported artifact.

Routes (JSON bodies mirror :class:`~recsys.serving.artifact.LoadedRecommender`'s answers, so an
HTTP answer compares directly with ``recsys.load(...)``'s):

- ``GET /health``: model, artifact digest (SHA-256 of ``artifact.json``), sizes, signature state;
- ``GET /v1/recommend?user=&k=&exclude_seen=`` and ``POST /v1/recommend`` (a batch of users):
  ``{"user", "items", "scores"}`` per user, plus ``"fallback": "popular"`` where one was used;
- ``POST /v1/recommend/history``: a session or a new customer (item ids, oldest first; and/or
  customer ``attributes``; ``new_items`` ranked with the catalogue, for models with features);
- ``GET /v1/similar?item=&k=`` and ``POST /v1/similar`` (a new product's ``attributes``);
- ``GET /metrics`` (Prometheus text), ``POST /admin/reload``, OpenAPI docs at ``/docs``.

How a request is answered. The served app is :class:`_Gate`, a pure ASGI layer in front of the
FastAPI app: token, body limit, metrics, access log, and for the hot routes (recommend, history,
similar) the whole request, validated with the routes' own pydantic models and answered with
pre-serialised JSON, without FastAPI's routing (FastAPI declares the same routes for ``/docs``).
The handler (on the event loop) checks the request and turns ids
into the artifact's indices, then hands a job to a :class:`~recsys.serving.microbatch.MicroBatcher`:
concurrent jobs become one scoring call in one worker thread, off the event loop. Each job
carries the :class:`Served` artifact it was checked against, so a reload that swaps in a new
artifact never mixes one artifact's ids with another's scores, and requests in flight finish on
the artifact they started with. The worker holds the GIL as little as it can, since the event
loop needs it for every request: a SASRec history is encoded by a fast path built at load
(:mod:`recsys.serving.history`: a closed form of ~70 small numpy operations for one-block
models, else one TorchScript call that releases the GIL once) rather than ~100 Python-level
torch calls, each a point where the two threads trade the GIL.

Errors are JSON, ``{"error": <one line>}`` plus ``"field"`` where one field is at fault: 400 a
body that is not JSON, 401 no or a wrong bearer token, 404 an unknown user or item (named) unless
a fallback is configured, 413 an oversize body, 422 a field out of range or a request the model
cannot answer (named); a bug is a 500 with no trace in the body.

Privacy: the access log has method, path (no query string), status and time: never an id. Users
on the opt-out list are answered as unknown users are (the fallback, or 404); the list is read
again on every reload. Pseudonymised artifacts are queried by pseudonym; with the pseudonym key
in its environment variable, opt-out lines may also be raw ids.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from recsys.errors import ConfigError, RecsysError
from recsys.serving.artifact import MANIFEST, LoadedRecommender, UnknownIdError, _id_key, pseudonym
from recsys.serving.microbatch import MicroBatcher
from recsys.serving.prometheus import CONTENT_TYPE, Registry

log = logging.getLogger("recsys.serve")
access_log = logging.getLogger("recsys.serve.access")

TOKEN_ENV = "RECSYS_SERVE_TOKEN"
SETTINGS_ENV = "RECSYS_SERVE_SETTINGS"  # the settings, as JSON, for --workers > 1 (a factory)
ANN = ("none", "hnsw")
OPEN_PATHS = ("/health",)  # answered without the bearer token (load balancers' probes)
ROUTES = (
    "/health",
    "/v1/recommend",
    "/v1/recommend/history",
    "/v1/similar",
    "/metrics",
    "/admin/reload",
    "/docs",
    "/openapi.json",
)


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``recsys-serve`` is told (the CLI flags), checked by :meth:`check`."""

    artifact: str
    backend: str = "auto"
    trust: tuple[str, ...] = ()
    fallback: str | None = None
    token_env: str = TOKEN_ENV
    opt_out: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 0.0  # 0: batch what queued during the previous call, never wait
    max_k: int = 1000
    max_users: int = 1000  # users in one POST /v1/recommend
    max_body_bytes: int = 1 << 20
    ann: str = "none"
    ann_ef: int = 128
    threads: int = 1
    workers: int = 1
    trace: bool = True  # history models: the fast encoder (recsys.serving.history)
    screen: bool = True  # dot-product models: the int8 screen (recsys.serving.screen)

    def check(self) -> ServeSettings:
        for name, low in (
            ("max_batch", 1),
            ("max_k", 1),
            ("max_users", 1),
            ("max_body_bytes", 64),
            ("ann_ef", 1),
            ("threads", 1),
            ("workers", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}"
                )
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms!r}")
        if self.ann not in ANN:
            raise ConfigError(f"--ann must be one of {', '.join(ANN)}, got {self.ann!r}")
        if self.fallback not in (None, "popular"):
            raise ConfigError(f"--fallback must be popular, got {self.fallback!r}")
        if self.opt_out is not None and not Path(self.opt_out).is_file():
            raise ConfigError(f"--opt-out: no such file: {self.opt_out}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        d = json.loads(text)
        d["trust"] = tuple(d.get("trust") or ())
        return cls(**d).check()


class BadRequest(RecsysError):
    """A request field out of range (422, naming the field)."""

    def __init__(self, field_name: str, message: str, status: int = 422):
        super().__init__(message)
        self.field = field_name
        self.status = status


# -- the served artifact ---------------------------------------------------------------------
def _opt_out_ids(path: str | None, rec: LoadedRecommender) -> frozenset[str]:
    """The opted-out ids as the artifact names users: each line as written, and, for a
    pseudonymised artifact whose key is in the environment, the line's pseudonym too."""
    if path is None:
        return frozenset()
    from recsys.data.optout import read_ids

    ids = set(read_ids(Path(path)))
    pseudo = rec.meta.get("pseudonymized_users") or {}
    key = os.environ.get(str(pseudo.get("key_env") or "")) if pseudo else None
    if key:
        ids |= {pseudonym(u, key) for u in ids}
    return frozenset(ids)


@dataclass(eq=False)
class Served:
    """One loaded artifact with what the service keeps beside it (its digest, the opt-out list,
    the approximate index); replaced as a whole on reload, never changed in place."""

    rec: LoadedRecommender
    path: Path  # the resolved directory it was read from
    digest: str
    load_seconds: float
    loaded_at: float
    opted_out: frozenset[str] = frozenset()
    ann: Any = None  # recsys.serving.ann.InnerProductIndex, or None: exact scoring
    ann_info: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        return str(self.rec.meta["model"]["_target_"]).rsplit(".", 1)[-1]

    def user(self, value: Any) -> int | None:
        """Internal index of an external user id; None when unknown or opted out."""
        rec = self.rec
        if self.opted_out and (str(value).strip() in self.opted_out):
            return None
        key = _id_key(value, rec.user_ids.dtype)
        if self.opted_out and str(key) in self.opted_out:
            return None
        return rec._user_index.get(key)

    def items(self, values: Sequence[Any]) -> list[int | None]:
        return self.rec.item_index(values, allow_unknown=True)

    def health(self) -> dict[str, Any]:
        rec = self.rec
        return {
            "status": "ok",
            "model": self.model,
            "target": rec.meta["model"]["_target_"],
            "digest": self.digest,
            "artifact": str(self.path),
            "signature": rec.signature,
            "users": rec.num_users,
            "items": rec.num_items,
            "scores_history": rec.supports_history,
            "features": rec.features.schema() if rec.features is not None else None,
            "backend": rec.backend,
            "history_path": rec.history_path if rec.supports_history else None,
            "scan_path": rec.scan_path,
            "ann": self.ann_info,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "load_seconds": round(self.load_seconds, 3),
            "pid": os.getpid(),  # the worker process that answered (--workers > 1)
        }

    # -- the batched paths (called in the scoring thread) -----------------------------------
    def answer(self, jobs: Sequence[ScoreJob]) -> list[dict[str, Any]]:
        """Top-k rows for jobs of this artifact: one scoring call for all of them."""
        rec = self.rec
        users = [j.user for j in jobs]
        hists = [j.history for j in jobs]
        if self.ann is not None:
            q = rec._query_vectors(users, hists)
            k = max(j.k for j in jobs)
            seen = [j.history if j.exclude_seen else _EMPTY for j in jobs]
            ids, scores = self.ann.search(q, k, exclude=seen)
            out = []
            for j, row_ids, row_scores in zip(jobs, ids, scores, strict=True):
                keep = row_ids[: j.k] >= 0
                out.append(
                    {
                        "items": rec.item_ids[row_ids[: j.k][keep]].tolist(),
                        "scores": row_scores[: j.k][keep].astype(float).tolist(),
                    }
                )
            return out
        seen = [j.history if j.exclude_seen else None for j in jobs]
        rows = rec.ranked(users, hists, [j.k for j in jobs], seen)
        return [{"items": items, "scores": top} for items, top in rows]


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ScoreJob:
    """Top-k for a known user (``user`` ≥ 0, its artifact history) or a history (``user`` -1)."""

    served: Served
    user: int
    history: np.ndarray
    k: int
    exclude_seen: bool


@dataclass(frozen=True, eq=False)
class CallJob:
    """Any other call on the model (similar items, attributes, new items): run in the scoring
    thread too, so one thread owns the model."""

    fn: Callable[[], Any]


def _process(jobs: list[ScoreJob | CallJob]) -> list[Any]:
    """The batcher's worker: score jobs grouped per artifact into one call each."""
    out: list[Any] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for n, job in enumerate(jobs):
        if isinstance(job, CallJob):
            try:
                out[n] = job.fn()
            except Exception as e:  # noqa: BLE001 - handed to the request that asked
                out[n] = e
        else:
            groups.setdefault(id(job.served), []).append(n)
    for members in groups.values():
        group = [jobs[n] for n in members]
        try:
            rows = group[0].served.answer(group)
        except Exception as e:  # noqa: BLE001
            rows = [e] * len(members)
        for n, row in zip(members, rows, strict=True):
            out[n] = row
    return out


def load_served(settings: ServeSettings) -> Served:
    """Read, verify and prepare the artifact at ``settings.artifact`` (blocking: seconds)."""
    start = time.perf_counter()
    path = Path(settings.artifact).expanduser().resolve()  # one directory, even mid symlink flip
    rec = LoadedRecommender(
        path,
        backend=settings.backend,
        trust=settings.trust or None,
        trace=settings.trace,
        screen=settings.screen,
    )
    digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    ann = None
    if settings.ann == "hnsw":
        ann = _build_ann(rec, settings)
    served = Served(
        rec=rec,
        path=path,
        digest=digest,
        load_seconds=0.0,
        loaded_at=time.time(),
        opted_out=_opt_out_ids(settings.opt_out, rec),
        ann=ann,
        ann_info=None if ann is None else {"kind": "hnsw", "ef_search": settings.ann_ef},
    )
    _warm_up(served)
    served.load_seconds = time.perf_counter() - start
    return served


def _build_ann(rec: LoadedRecommender, settings: ServeSettings):
    from recsys.serving.ann import InnerProductIndex, require_faiss

    table = rec._dot_table() if rec.backend == "eager" else None
    if table is None:
        raise ConfigError(
            f"--ann hnsw: {rec._name()} does not score by a dot product of user and item "
            "vectors (or --backend is not eager)"
        )
    faiss = require_faiss()
    faiss.omp_set_num_threads(settings.threads)  # faiss' own OpenMP pool, as --threads says
    return InnerProductIndex(np.ascontiguousarray(table.T), ef_search=settings.ann_ef)


def _warm_up(served: Served) -> None:
    """One scoring call before the first request (lazy tables, first-call allocations)."""
    rec = served.rec
    user = int(np.argmax(np.diff(rec.indptr))) if rec.num_users else -1
    if user >= 0:
        served.answer([ScoreJob(served, user, rec.history(user), 10, True)])


# -- the app ---------------------------------------------------------------------------------
class Service:
    """The state one server process holds: the served artifact, the batcher, the metrics."""

    def __init__(self, settings: ServeSettings, served: Served | None = None):
        self.settings = settings
        self.served = served
        self.token = os.environ.get(settings.token_env) or None
        self.batcher: MicroBatcher | None = None
        self._reload_lock = asyncio.Lock()
        m = self.metrics = Registry()
        self.m_requests = m.counter(
            "recsys_requests_total", "HTTP requests by endpoint and status", ("endpoint", "status")
        )
        self.m_latency = m.histogram(
            "recsys_request_duration_seconds",
            "HTTP request time, from the request's arrival to the end of the response",
            ("endpoint",),
        )
        self.m_batch = m.histogram(
            "recsys_batch_size",
            "jobs per scoring call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.m_batch_seconds = m.histogram("recsys_batch_seconds", "time of one scoring call")
        self.m_load = m.gauge("recsys_model_load_seconds", "time to load the served artifact")
        self.m_info = m.gauge(
            "recsys_model_info", "the served artifact (value 1)", ("model", "digest")
        )
        self.m_reloads = m.counter("recsys_reloads_total", "reloads by result", ("result",))
        self.m_opted_out = m.gauge("recsys_opted_out_users", "ids on the opt-out list")
        self._batch_size, self._batch_time = self.m_batch.bind(), self.m_batch_seconds.bind()

    def _on_batch(self, size: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._batch_time.observe(seconds)

    def _show(self, served: Served) -> None:
        if self.served is not None and self.served is not served:
            self.m_info.set(0, model=self.served.model, digest=self.served.digest)
        self.served = served
        self.m_load.set(served.load_seconds)
        self.m_info.set(1, model=served.model, digest=served.digest)
        self.m_opted_out.set(len(served.opted_out))

    async def start(self) -> None:

        set_threads(self.settings.threads)
        if self.served is None:
            self.served = await asyncio.to_thread(load_served, self.settings)
        self._show(self.served)
        # what loading left on the heap never becomes garbage: keep the cyclic collector from
        # walking it again and again under load (a tail latency cost, benchmarks/serving.md)
        gc.freeze()
        self.batcher = MicroBatcher(
            _process,
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            on_batch=self._on_batch,
        )
        if self.settings.workers == 1:  # with workers, uvicorn's parent restarts them on SIGHUP
            try:
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_logged("SIGHUP"))
                )
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                log.debug("SIGHUP reload not available in this thread")

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def reload(self) -> dict[str, Any]:
        """Load the artifact path again (and the opt-out list) and swap it in, or raise the
        one-line reason it was refused; the old artifact keeps serving either way until then."""
        async with self._reload_lock:
            old = self.served
            try:
                new = await asyncio.to_thread(load_served, self.settings)
            except RecsysError:
                self.m_reloads.inc(result="refused")
                raise
            except Exception as e:  # noqa: BLE001 - any failure to load keeps the old model
                self.m_reloads.inc(result="refused")
                raise RecsysError(
                    f"{self.settings.artifact}: not loadable ({type(e).__name__})"
                ) from e
            self._show(new)
            self.m_reloads.inc(result="loaded")
            return {
                "reloaded": True,
                "model": new.model,
                "digest": new.digest,
                "previous_digest": old.digest if old is not None else None,
                "opted_out": len(new.opted_out),
            }

    async def _reload_logged(self, why: str) -> None:
        try:
            r = await self.reload()
            log.warning("%s: serving %s %s", why, r["model"], r["digest"][:12])
        except RecsysError as e:
            log.error("%s: reload refused, still serving %s: %s", why, self.served.digest[:12], e)

    async def run(self, job: ScoreJob | CallJob) -> Any:
        assert self.batcher is not None
        return await self.batcher.submit(job)


def set_threads(n: int) -> None:
    """``n`` threads for torch and for numpy's BLAS (its default is one per core: on a busy
    server those threads spin against the event loop for the same cores)."""
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; absent, BLAS keeps its default
        return
    threadpool_limits(limits=n)


def _k(k: int, settings: ServeSettings) -> int:
    if k < 1 or k > settings.max_k:
        raise BadRequest("k", f"k must be between 1 and {settings.max_k}, got {k}")
    return k


# json.dumps builds a JSONEncoder on every call that is not all defaults: build it once (the
# same options: ASCII-only, NaN allowed as before, no spaces)
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _bytes(content: Any) -> bytes:
    return _encode(content).encode()


def _error(status: int, message: str, field_name: str | None = None, headers=None):
    body: dict[str, Any] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    return JSONResponse(body, status_code=status, headers=headers)


def _raw(payload: bytes) -> Response:
    """A 200 answer of JSON bytes already serialised."""
    return Response(payload, media_type="application/json")


def _json(content: Any):
    return _raw(_bytes(content))


def _invalid(errors: Sequence[Any]) -> JSONResponse:
    """The first validation error (pydantic's or FastAPI's) as 400 (not JSON) or 422 naming the
    field, e.g. ``k: Input should be a valid integer ...`` with ``"field": "k"``."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return _error(400, f"malformed JSON body ({first.get('msg', 'invalid')})", "body")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
    msg = first.get("msg", "invalid")
    if len(loc) > 1 and loc[-1] in _ID_TAGS:  # an id that is neither (one error per member)
        loc, msg = loc[:-1], "Input should be an id: a string or an integer"
    name = ".".join(loc) or "body"
    return _error(422, f"{name}: {msg}", name)


def _failure(exc: Exception, path: str) -> JSONResponse:
    """The JSON error answer for an exception raised while answering a request: never a trace."""
    if isinstance(exc, ValidationError | RequestValidationError):
        return _invalid(exc.errors())
    if isinstance(exc, BadRequest):
        return _error(exc.status, str(exc), exc.field)
    if isinstance(exc, UnknownIdError):
        return _error(404, str(exc))
    if isinstance(exc, RecsysError):
        return _error(422, str(exc))
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
    log.error("internal error on %s: %s", path, type(exc).__name__, exc_info=exc)
    return _error(500, "internal error")


_JSON_HEADERS = (b"content-type", b"application/json")


async def _send_json(send, payload: bytes) -> None:
    """A 200 answer with a JSON body, as two raw ASGI messages (no Response object)."""
    length = (b"content-length", str(len(payload)).encode())
    await send({"type": "http.response.start", "status": 200, "headers": [_JSON_HEADERS, length]})
    await send({"type": "http.response.body", "body": payload})


FastRoute = Callable[[dict, bytes], Any]  # (scope, body bytes) -> awaitable JSON bytes


class _Gate:
    """The served ASGI app: a pure ASGI layer in front of the FastAPI app (``api``) for the
    bearer token, the body size limit, metrics and the access log (no ids: the query string is
    never logged); and the hot routes' lean path. Outermost, so a request it answers skips
    FastAPI's own middleware too (error, telemetry and body-limit wrappers).

    The hot routes (``fast``: method and path to a handler) are answered here without going
    through FastAPI's routing, dependency solving and response handling (~0.3 ms of CPU per
    request, more than this middleware and the handler together): the handler gets the query
    string and body bytes, validates them with the same pydantic models that FastAPI's
    declarations of these routes use (so ``/docs`` describes exactly what is accepted, and the
    errors are the same: 400 not JSON, 422 naming the field), and returns the answer's JSON
    bytes. Everything else (docs, metrics, admin, 404, 405) goes on to FastAPI."""

    def __init__(self, app: FastAPI, service: Service, fast: dict[tuple[str, str], FastRoute]):
        self.api = app
        self.state = app.state  # the FastAPI app's: .service
        self.service = service
        self.fast = fast
        self._counts: dict[tuple[str, int], Any] = {}  # bound metrics, by endpoint and status
        self._times: dict[str, Any] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.api(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in ROUTES else "other"
        status = 500
        try:
            response = self._refuse(scope, path) if self.service.token is not None else None
            handler = self.fast.get((scope["method"], path)) if response is None else None
            body = b""
            if response is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, response = await self._read(scope, receive)
            if response is None and handler is not None:
                try:
                    payload = await handler(scope, body)
                except Exception as e:  # noqa: BLE001 - answered as JSON, never a trace
                    response = _failure(e, path)
                else:
                    status = 200
                    await _send_json(send, payload)
                    return
            if response is not None:
                status = response.status_code
                await response(scope, receive, send)
                return

            if scope["method"] in ("POST", "PUT", "PATCH"):
                sent = False

                async def replay():  # the body read above, then whatever the client sends
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                receive = replay
            statuses = [500]

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    statuses[0] = message["status"]
                await send(message)

            try:
                await self.api(scope, receive, send_wrapper)
            finally:
                status = statuses[0]
        finally:
            seconds = time.perf_counter() - start
            self._observe(endpoint, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("%s %s %d %.1fms", scope["method"], path, status, seconds * 1e3)

    def _observe(self, endpoint: str, status: int, seconds: float) -> None:
        count = self._counts.get((endpoint, status))
        if count is None:
            count = self._counts[(endpoint, status)] = self.service.m_requests.bind(
                endpoint=endpoint, status=str(status)
            )
        count.inc()
        timer = self._times.get(endpoint)
        if timer is None:
            timer = self._times[endpoint] = self.service.m_latency.bind(endpoint=endpoint)
        timer.observe(seconds)

    def _refuse(self, scope, path: str):
        token = self.service.token
        if token is None or path in OPEN_PATHS:
            return None
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        want = b"Bearer " + token.encode()
        if not hmac.compare_digest(given, want):
            what = "missing" if not given else "wrong"
            return _error(
                401,
                f"{what} bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    async def _read(self, scope, receive) -> tuple[bytes, Response | None]:
        """The request body, up to the limit (413 beyond it: on Content-Length, and while
        reading); or an error answer."""
        limit = self.service.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return b"", _error(413, f"body over {limit} bytes", "body", None)
                except ValueError:
                    return b"", _error(400, "malformed Content-Length", "body")
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", _error(400, "client disconnected", "body")
        body = message.get("body", b"")
        if len(body) > limit:
            return b"", _error(413, f"body over {limit} bytes", "body")
        if not message.get("more_body", False):  # the usual case: one message
            return body, None
        chunks, size = [body], len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _error(400, "client disconnected", "body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", _error(413, f"body over {limit} bytes", "body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


# -- request and response bodies (OpenAPI; the lean path validates with the same models) -------
Id = str | int  # external ids in answers, as the artifact has them (numbers or strings)
# in JSON bodies: a string or an integer, nothing converted (true is not the id 1, 7.0 not 7)
BodyId = StrictStr | StrictInt
_ID_TAGS = ("str", "int")  # pydantic's names of BodyId's members, at the end of an error's loc


class Row(BaseModel):
    user: Id | None = Field(description="the user (null for a history or new customer)")
    items: list[Id]
    scores: list[float]
    fallback: str | None = Field(None, description="'popular' when the fallback answered")


class Rows(BaseModel):
    results: list[Row]


class Similar(BaseModel):
    item: Id | None
    items: list[Id]
    scores: list[float]
    method: str | None = None


class UserQuery(BaseModel):
    """The query of ``GET /v1/recommend``."""

    user: str = Field(description="external user id")
    k: int = Field(10, description="how many items")
    exclude_seen: bool = Field(True, description="leave out items the user interacted with")


class ItemQuery(BaseModel):
    """The query of ``GET /v1/similar``."""

    item: str = Field(description="external item id")
    k: int = Field(10, description="how many items")
    method: str = Field("auto", description="auto, embedding or cooccurrence")


class Users(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[BodyId] = Field(min_length=1, description="external user ids")
    k: StrictInt = Field(10, description="how many items per user")
    exclude_seen: bool = Field(True, description="leave out items the user interacted with")


class History(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[BodyId] = Field([], description="the session's item ids, oldest first")
    k: StrictInt = Field(10, description="how many items")
    exclude_seen: bool = Field(True, description="leave out the history's items")
    attributes: dict[str, Any] | None = Field(
        None, description="a new customer's attributes (models trained with user features)"
    )
    new_items: dict[str, dict[str, Any]] | None = Field(
        None, description="new products {id: attributes} to rank with the catalogue"
    )


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: dict[str, Any] = Field(description="a new product's attributes")
    k: StrictInt = Field(10, description="how many items")


def _query(scope: dict) -> dict[str, str]:
    """The query string's parameters, the last of a repeated one (as FastAPI reads them)."""
    qs = scope["query_string"]
    return dict(parse_qsl(qs.decode("latin-1"), keep_blank_values=True)) if qs else {}


def create_app(settings: ServeSettings, served: Served | None = None):
    """The ASGI app serving ``settings.artifact`` (or the already loaded ``served``): the
    FastAPI app (``.api``) behind :class:`_Gate`; ``.state.service`` is the :class:`Service`."""
    from contextlib import asynccontextmanager

    settings = settings.check()
    service = Service(settings, served)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="recsys",
        summary="Recommendations from an exported recsys artifact",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service

    # -- errors: JSON with the right status, never a trace ----------------------------------
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _invalid(exc.errors())

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        return _failure(exc, request.url.path)

    for kind in (BadRequest, UnknownIdError, RecsysError, HTTPException):
        app.add_exception_handler(kind, crash)

    # -- what the routes do (the lean path and FastAPI's declarations call the same) ----------
    def _unknown(kind: str, ids: list[Any], served: Served) -> UnknownIdError:
        known = served.rec.num_users if kind == "user" else served.rec.num_items
        return UnknownIdError(
            f"unknown {kind} id(s): {', '.join(map(str, ids[:5]))} (the artifact knows {known} "
            f"{kind}s{'' if kind == 'item' else '; start the server with --fallback popular to answer them'})"
        )

    async def _users(served: Served, users: list[Any], k: int, exclude_seen: bool) -> list[dict]:
        idx = [served.user(u) for u in users]
        missing = [u for u, i in zip(users, idx, strict=True) if i is None]
        if missing and settings.fallback != "popular":
            raise _unknown("user", missing, served)
        rec = served.rec
        jobs = [
            CallJob(lambda: served.rec._popular(None, k))
            if i is None
            else ScoreJob(served, i, rec.history(i), k, exclude_seen)
            for i in idx
        ]
        if len(jobs) == 1:  # the hot path (GET): no gather
            rows = [await service.run(jobs[0])]
        else:
            rows = await asyncio.gather(*(service.run(j) for j in jobs))
        return [
            {"user": u if i is None else rec.user_ids[i].item(), **row}
            for u, i, row in zip(users, idx, rows, strict=True)
        ]

    async def do_recommend(q: UserQuery) -> bytes:
        rows = await _users(service.served, [q.user], _k(q.k, settings), q.exclude_seen)
        return _bytes(rows[0])

    async def do_recommend_batch(body: Users) -> bytes:
        if len(body.users) > settings.max_users:
            raise BadRequest("users", f"at most {settings.max_users} users per request")
        rows = await _users(service.served, body.users, _k(body.k, settings), body.exclude_seen)
        return _bytes({"results": rows})

    async def do_history(body: History) -> bytes:
        served, k = service.served, _k(body.k, settings)
        idx = served.items(body.items)
        missing = [v for v, i in zip(body.items, idx, strict=True) if i is None]
        if missing and settings.fallback != "popular":
            raise _unknown("item", missing, served)
        hist = np.array([i for i in idx if i is not None], dtype=np.int64)
        simple = body.attributes is None and not body.new_items
        if simple and served.rec.supports_history and len(hist):
            row = await service.run(ScoreJob(served, -1, hist, k, body.exclude_seen))
            return _bytes({"user": None, **row})
        rows = await service.run(
            CallJob(
                lambda: served.rec.recommend(
                    history=body.items if body.items or body.attributes is None else None,
                    attributes=body.attributes,
                    new_items=body.new_items,
                    k=k,
                    exclude_seen=body.exclude_seen,
                    fallback=settings.fallback,
                )
            )
        )
        return _bytes(rows[0])

    async def do_similar(q: ItemQuery) -> bytes:
        served, k = service.served, _k(q.k, settings)
        i = served.items([q.item])[0]
        if i is None:
            raise _unknown("item", [q.item], served)
        if q.method not in ("auto", "embedding", "cooccurrence"):
            raise BadRequest(
                "method", f"method must be auto, embedding or cooccurrence, got {q.method!r}"
            )
        rows = await service.run(CallJob(lambda: served.rec.similar_items([q.item], k, q.method)))
        row = rows[0]
        row["item"] = served.rec.item_ids[i].item()
        return _bytes(row)

    async def do_similar_new(body: NewItem) -> bytes:
        served, k = service.served, _k(body.k, settings)
        row = await service.run(CallJob(lambda: served.rec.similar(body.attributes, k)))
        return _bytes({"item": None, **row})

    # the lean path (_Gate): the scope's query string or the body's bytes, validated by the
    # same models (pydantic-core parses the JSON and validates in one pass)
    def _from_query(model: type[BaseModel], do):
        return lambda scope, body: do(model.model_validate(_query(scope)))

    def _from_body(model: type[BaseModel], do):
        return lambda scope, body: do(model.model_validate_json(body))

    fast: dict[tuple[str, str], FastRoute] = {
        ("GET", "/v1/recommend"): _from_query(UserQuery, do_recommend),
        ("POST", "/v1/recommend"): _from_body(Users, do_recommend_batch),
        ("POST", "/v1/recommend/history"): _from_body(History, do_history),
        ("GET", "/v1/similar"): _from_query(ItemQuery, do_similar),
        ("POST", "/v1/similar"): _from_body(NewItem, do_similar_new),
    }

    # -- routes: FastAPI's declarations of the lean routes (what /docs shows; reached only
    # without the _Gate in front) and the other routes -------------------------------------
    @app.get("/health", summary="the served model and artifact")
    async def health():
        return _json(service.served.health())

    @app.get("/v1/recommend", response_model=Row, summary="top-k items for one known user")
    async def recommend(q: Annotated[UserQuery, Query()]):
        return _raw(await do_recommend(q))

    @app.post("/v1/recommend", response_model=Rows, summary="top-k items for a batch of users")
    async def recommend_batch(body: Users):
        return _raw(await do_recommend_batch(body))

    @app.post(
        "/v1/recommend/history",
        response_model=Row,
        summary="top-k items for a session or a new customer",
    )
    async def recommend_history(body: History):
        return _raw(await do_history(body))

    @app.get("/v1/similar", response_model=Similar, summary="items similar to a catalogue item")
    async def similar(q: Annotated[ItemQuery, Query()]):
        return _raw(await do_similar(q))

    @app.post("/v1/similar", response_model=Similar, summary="catalogue items like a new product")
    async def similar_new(body: NewItem):
        return _raw(await do_similar_new(body))

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", summary="load the artifact path (and the opt-out list) again")
    async def reload():
        if settings.workers > 1:  # check here, then let uvicorn's parent replace the workers
            try:
                await asyncio.to_thread(load_served, settings)
            except RecsysError as e:
                return _error(409, f"refused, still serving {service.served.digest}: {e}")
            os.kill(os.getppid(), signal.SIGHUP)
            return _json({"reloaded": "restarting workers"})
        try:
            return _json(await service.reload())
        except RecsysError as e:
            return _error(409, f"refused, still serving {service.served.digest}: {e}")

    return _Gate(app, service, fast)


def app_from_env():
    """App factory for uvicorn's worker processes (``--workers`` > 1): settings from
    ``$RECSYS_SERVE_SETTINGS``."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigError(f"${SETTINGS_ENV} is not set (recsys-serve sets it for its workers)")
    return create_app(ServeSettings.from_json(text))
