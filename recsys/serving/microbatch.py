"""Micro-batching: concurrent requests on one event loop share one scoring call.

The rule: a collector task takes the first queued job, then keeps taking jobs until
``max_batch`` are collected or ``max_wait_s`` has passed since the first was taken. Jobs that are
already queued are taken at once without waiting, so ``max_wait_s=0`` means "take what is queued
now and go". Batches run one after another: while one runs, new arrivals queue up and form the
next batch, which is where batching pays under load (an idle service adds at most ``max_wait_s``
to a lone request).

The batch runs in ONE dedicated worker thread, never on the event loop, so the loop keeps
accepting requests while torch scores. One thread rather than a pool because a torch scoring
call already uses the machine's cores through its own intra-op threads: two calls at once would
only compete for them (and for memory), and serial calls keep per-batch latency predictable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from recsys.errors import ConfigError

J = TypeVar("J")
R = TypeVar("R")

log = logging.getLogger(__name__)

_STOP: Any = object()  # queued by close(): everything queued before it is still served


class MicroBatcher(Generic[J, R]):
    """Groups jobs submitted concurrently on one event loop into calls of ``process(jobs)``.

    ``process`` runs in the batcher's worker thread and returns one result per job, in order; a
    result that is an ``Exception`` instance is raised to that job's caller only. If ``process``
    raises, every job of the batch gets that exception. ``on_batch(size, seconds)`` is called on
    the event loop after each batch with the wall time of ``process``; its errors are logged and
    ignored. A batcher belongs to the event loop of its first ``submit``.
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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[J, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        # The stop marker is the last item ever queued; once taken, the queue is empty.
        return max(0, self._queue.qsize() - (1 if self._closed and self._task else 0))

    async def submit(self, job: J) -> R:
        """Queue ``job`` and wait for its result (or its exception)."""
        if self._closed:
            raise RuntimeError(f"{self._name}: micro-batcher is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._loop = loop
            self._task = loop.create_task(self._collect(), name=f"{self._name}-collector")
        elif loop is not self._loop:
            raise RuntimeError(f"{self._name}: micro-batcher is bound to another event loop")
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait((job, future))
        # If our caller is cancelled, so is this future; the collector then skips or drops it.
        return await future

    async def close(self) -> None:
        """Stop accepting jobs, finish those already queued, then stop the worker thread."""
        if not self._closed:
            self._closed = True
            if self._task is not None:
                self._queue.put_nowait(_STOP)
        if self._task is not None and not self._task.done():
            # wait() rather than await: a collector cancelled at loop shutdown must not make
            # close() itself look cancelled.
            await asyncio.wait([self._task])
        # The collector has returned, so no batch is running: the thread exits at once.
        self._executor.shutdown(wait=False)

    async def _collect(self) -> None:
        """Form batches and run them, one after another, until the stop marker arrives."""
        loop = asyncio.get_running_loop()
        batch: list[tuple[J, asyncio.Future[R]]] = []
        stop = False
        try:
            while not stop:
                item = await self._queue.get()
                if item is _STOP:
                    break
                batch = [item]
                deadline = loop.time() + self._max_wait_s
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            item = await asyncio.wait_for(self._queue.get(), remaining)
                        except asyncio.TimeoutError:
                            break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                await self._run(batch)
        finally:
            # After close() every job is answered already. If instead this task was cancelled
            # (its loop is shutting down), fail what is left rather than leave callers waiting.
            self._closed = True
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not _STOP:
                    batch.append(item)
            for _, future in batch:
                if not future.done():
                    future.set_exception(RuntimeError(f"{self._name}: micro-batcher stopped"))

    async def _run(self, batch: list[tuple[J, asyncio.Future[R]]]) -> None:
        """Score one batch in the worker thread and hand each caller its result."""
        live = [(job, future) for job, future in batch if not future.done()]  # skip cancelled
        if not live:
            return
        jobs = [job for job, _ in live]
        loop = asyncio.get_running_loop()
        results, seconds = await loop.run_in_executor(self._executor, self._call, jobs)
        for (_, future), result in zip(live, results, strict=True):
            if future.done():  # its caller went away while the batch ran
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._on_batch is not None:
            try:
                self._on_batch(len(jobs), seconds)
            except Exception:
                log.exception("%s: on_batch callback failed", self._name)

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
