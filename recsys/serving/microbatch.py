"""Micro-batching: concurrent requests on one event loop share one scoring call.

The rule: the batcher takes the first queued job, then keeps taking jobs until
``max_batch`` are collected or ``max_wait_s`` has passed since the first was taken. Jobs that are
already queued are taken at once without waiting, so ``max_wait_s=0`` means "take what is queued
now and go". Batches run one after another: while one runs, new arrivals queue up and form the
next batch, which is where batching pays under load (an idle service adds at most ``max_wait_s``
to a lone request).

The batch runs in ONE dedicated worker thread, never on the event loop, so the loop keeps
accepting requests while torch scores. The hand-off is as lean as asyncio allows, since it is
paid on every request: batches are formed by a callback on the loop (no collector task, no
asyncio.Queue), handed to the thread through a ``queue.SimpleQueue``, and the thread returns a
whole batch's results with one ``call_soon_threadsafe`` (no executor, no concurrent.futures
Future chained to an asyncio one). One thread rather than a pool because a torch scoring
call already uses the machine's cores through its own intra-op threads: two calls at once would
only compete for them (and for memory), and serial calls keep per-batch latency predictable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from recsys.errors import ConfigError

J = TypeVar("J")
R = TypeVar("R")

log = logging.getLogger(__name__)

_STOP: Any = object()  # handed to the worker thread by close(): it returns


class MicroBatcher(Generic[J, R]):
    """Groups jobs submitted concurrently on one event loop into calls of ``process(jobs)``.

    ``process`` runs in the batcher's worker thread and returns one result per job, in order; a
    result that is an ``Exception`` instance is raised to that job's caller only. If ``process``
    raises, every job of the batch gets that exception. ``on_batch(size, seconds)`` is called on
    the event loop after each batch with the wall time of ``process``; its errors are logged and
    ignored. A batcher belongs to the event loop of its first ``submit``.

    States, all changed on the event loop: jobs wait in ``_queue`` (``pending``) until a batch
    is formed; a batch short of ``max_batch`` with ``max_wait_s`` > 0 waits in ``_forming``
    (new jobs join it) until it fills or its timer fires; then it runs in the worker thread
    (``_running``), and its results come back in one callback, which forms the next batch from
    what queued meanwhile.
    """

    def __init__(
        self,
        process: Callable[[list[J]], list[R]],
        max_batch: int = 64,
        max_wait_s: float = 0.001,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "recsys-score",
    ):
        if not max_batch >= 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch!r}")
        if not max_wait_s >= 0:  # also refuses NaN
            raise ConfigError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        self._process = process
        self._max_batch = int(max_batch)
        self._max_wait_s = float(max_wait_s)
        self._on_batch = on_batch
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[tuple[J, asyncio.Future[R]]] = deque()  # submitted, not yet taken
        self._forming: list[tuple[J, asyncio.Future[R]]] = []  # taken, waiting for company
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled = False  # a _form callback is on the loop
        self._running = False  # a batch is in the worker thread
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._idle: list[asyncio.Future[None]] = []  # close() waiting for the last batch
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        return len(self._queue)

    async def submit(self, job: J) -> R:
        """Queue ``job`` and wait for its result (or its exception)."""
        if self._closed:
            raise RuntimeError(f"{self._name}: micro-batcher is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            if self._loop.is_closed():  # its loop ended with the batcher open: refuse
                self._abandon()
                raise RuntimeError(f"{self._name}: micro-batcher is closed")
            raise RuntimeError(f"{self._name}: micro-batcher is bound to another event loop")
        future: asyncio.Future[R] = loop.create_future()
        if self._forming:  # a batch waits for company: join it
            self._forming.append((job, future))
            if len(self._forming) >= self._max_batch:
                self._flush()
        else:
            self._queue.append((job, future))
            if not self._running and not self._scheduled:
                # after the callbacks already due: what else is submitted in this turn of the
                # loop joins the same batch
                self._scheduled = True
                loop.call_soon(self._form)
        # If our caller is cancelled, so is this future; it is then skipped or its result dropped.
        return await future

    async def close(self) -> None:
        """Stop accepting jobs, finish those already queued, then stop the worker thread."""
        self._closed = True
        if self._loop is not None and not self._loop.is_closed() and self._busy():
            waiter = self._loop.create_future()
            self._idle.append(waiter)
            await waiter
        if self._thread is not None:
            self._inbox.put(_STOP)  # no batch is running: the thread exits at once
            self._thread = None

    def _busy(self) -> bool:
        return bool(self._running or self._forming or self._queue or self._scheduled)

    def _abandon(self) -> None:
        """The loop ended while the batcher was open: refuse from now on (its callers are gone)."""
        self._closed = True
        self._queue.clear()
        self._forming = []
        self._running = self._scheduled = False

    # -- on the event loop -----------------------------------------------------------------
    def _form(self) -> None:
        """Take the queued jobs (up to ``max_batch``) as the next batch: run it now, or, when
        short and ``max_wait_s`` > 0, wait that long for company."""
        self._scheduled = False
        if self._running or self._forming:
            return
        batch = []
        while self._queue and len(batch) < self._max_batch:
            batch.append(self._queue.popleft())
        if not batch:
            self._settle()
            return
        if len(batch) < self._max_batch and self._max_wait_s > 0:
            self._forming = batch
            assert self._loop is not None
            self._timer = self._loop.call_later(self._max_wait_s, self._flush)
            return
        self._start(batch)

    def _flush(self) -> None:
        """Run the forming batch (full, or its wait is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._forming = self._forming, []
        if batch:
            self._start(batch)

    def _start(self, batch: list[tuple[J, asyncio.Future[R]]]) -> None:
        live = [(job, future) for job, future in batch if not future.done()]  # skip cancelled
        if not live:
            self._next()
            return
        self._running = True
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name=f"{self._name}-worker", daemon=True
            )
            self._thread.start()
        self._inbox.put(live)

    def _deliver(
        self, batch: list[tuple[J, asyncio.Future[R]]], results: list[Any], seconds: float
    ) -> None:
        """Hand each caller its result (the worker thread's batch is done)."""
        self._running = False
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller went away while the batch ran
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), seconds)
            except Exception:
                log.exception("%s: on_batch callback failed", self._name)
        self._next()

    def _next(self) -> None:
        if self._queue:
            self._form()
        else:
            self._settle()

    def _settle(self) -> None:
        """Nothing queued or running: wake close() if it waits."""
        if not self._busy():
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- in the worker thread --------------------------------------------------------------
    def _work(self) -> None:
        inbox, loop = self._inbox, self._loop
        assert loop is not None
        while True:
            batch = inbox.get()
            if batch is _STOP:
                return
            results, seconds = self._call([job for job, _ in batch])
            try:
                loop.call_soon_threadsafe(self._deliver, batch, results, seconds)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                return

    def _call(self, jobs: list[J]) -> tuple[list[Any], float]:
        """Run ``process`` (in the worker thread); never raises, errors become results."""
        start = time.perf_counter()
        try:
            results = list(self._process(jobs))
            if len(results) != len(jobs):
                raise RuntimeError(
                    f"{self._name}: process returned {len(results)} results for {len(jobs)} jobs"
                )
        except Exception as e:
            results = [e] * len(jobs)
        return results, time.perf_counter() - start
