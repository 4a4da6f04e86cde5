"""recsys.serving.microbatch: concurrent submits share scoring calls run in one worker thread;
each caller gets its own result or error; cancellation and close leave the batcher sound.

Each test drives its own event loop with ``asyncio.run``. Timing is never asserted tightly: where
an order of events matters, the test waits for it (a threading.Event, ``pending`` reaching a
value) instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from recsys.errors import ConfigError
from recsys.serving.microbatch import MicroBatcher


def doubler(calls: list[list[int]] | None = None):
    """A ``process`` that doubles each job and records the batches it was given."""

    def process(jobs: list[int]) -> list[int]:
        if calls is not None:
            calls.append(list(jobs))
        return [2 * j for j in jobs]

    return process


async def until(condition, timeout: float = 10.0) -> None:
    """Yield to the loop until ``condition()`` holds (generous timeout, then fail)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_results_go_to_the_right_caller():
    async def main():
        batcher = MicroBatcher(doubler(), max_batch=4)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return out

    assert asyncio.run(main()) == [2 * i for i in range(10)]


def test_concurrent_submits_are_grouped_into_bounded_batches():
    calls: list[list[int]] = []

    async def main():
        batcher = MicroBatcher(doubler(calls), max_batch=8, max_wait_s=0.01)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
        await batcher.close()
        return out

    assert asyncio.run(main()) == [2 * i for i in range(50)]
    assert all(1 <= len(c) <= 8 for c in calls)
    assert sorted(j for c in calls for j in c) == list(range(50))
    # All 50 are queued before the collector first runs, so batches are full: 7 calls, not 50.
    assert len(calls) < 50
    assert len(calls) == 7


def test_process_runs_in_one_worker_thread_not_on_the_loop():
    threads: list[tuple[int, str]] = []

    def process(jobs):
        threads.append((threading.get_ident(), threading.current_thread().name))
        return jobs

    async def main():
        batcher = MicroBatcher(process, max_batch=2, max_wait_s=0, name="test-score")
        await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        await batcher.close()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) >= 3
    assert {ident for ident, _ in threads} != {loop_thread}
    assert len({ident for ident, _ in threads}) == 1  # one dedicated thread for every batch
    assert all(name.startswith("test-score") for _, name in threads)


def test_an_exception_result_fails_only_its_job():
    def process(jobs):
        return [ValueError(f"bad {j}") if j == 3 else j for j in jobs]

    async def main():
        batcher = MicroBatcher(process, max_batch=10)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(5)), return_exceptions=True)
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert out[:3] == [0, 1, 2] and out[4] == 4
    assert isinstance(out[3], ValueError) and str(out[3]) == "bad 3"


def test_process_raising_fails_the_whole_batch_and_the_batcher_goes_on():
    boom = KeyError("model exploded")
    calls = []

    def process(jobs):
        calls.append(list(jobs))
        if len(calls) == 1:
            raise boom
        return jobs

    async def main():
        batcher = MicroBatcher(process, max_batch=10)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        second = await batcher.submit(7)
        await batcher.close()
        return first, second

    first, second = asyncio.run(main())
    assert len(calls[0]) == 3
    assert all(e is boom for e in first)
    assert second == 7


def test_wrong_number_of_results_is_a_runtime_error_for_every_job():
    async def main():
        batcher = MicroBatcher(lambda jobs: jobs[:-1], max_batch=10)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) for e in out)
    assert "returned 2 results for 3 jobs" in str(out[0])


def test_a_lone_job_waits_at_most_about_max_wait():
    calls: list[list[int]] = []

    async def main():
        batcher = MicroBatcher(doubler(calls), max_batch=64, max_wait_s=0.05)
        start = time.monotonic()
        out = await batcher.submit(21)
        elapsed = time.monotonic() - start
        await batcher.close()
        return out, elapsed

    out, elapsed = asyncio.run(main())
    assert out == 42 and calls == [[21]]
    # It waits out the window (a lower bound cannot flake), but not for a batch that never fills.
    assert 0.04 <= elapsed < 5.0


def test_a_job_arriving_within_the_wait_shares_the_batch():
    calls: list[list[int]] = []

    async def main():
        # A long wait and max_batch=2: the batch closes as soon as the second job is taken, so
        # the test is fast and cannot flake on a slow machine.
        batcher = MicroBatcher(doubler(calls), max_batch=2, max_wait_s=30.0)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)  # the ready tasks run first: job 1 is queued, then taken
        assert batcher.pending == 0 and not first.done()  # taken, and waiting for company
        second = await batcher.submit(2)
        out = (await first, second)
        await batcher.close()
        return out

    assert asyncio.run(main()) == (2, 4)
    assert calls == [[1, 2]]


def test_zero_wait_takes_what_is_queued_and_goes():
    calls: list[list[int]] = []

    async def main():
        batcher = MicroBatcher(doubler(calls), max_batch=64, max_wait_s=0)
        await batcher.submit(1)  # alone: answered without waiting for company
        await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        await batcher.close()

    asyncio.run(main())
    assert calls[0] == [1]
    assert sorted(j for c in calls[1:] for j in c) == list(range(5))


def test_a_cancelled_waiter_does_not_affect_the_others():
    started = threading.Event()
    release = threading.Event()
    calls: list[list[int]] = []

    def process(jobs):
        calls.append(list(jobs))
        if jobs[0] == 0:
            started.set()
            assert release.wait(10)
        return [2 * j for j in jobs]

    async def main():
        batcher = MicroBatcher(process, max_batch=3, max_wait_s=0)
        running = [asyncio.create_task(batcher.submit(i)) for i in range(3)]  # batch [0, 1, 2]
        await until(started.is_set)
        queued = [asyncio.create_task(batcher.submit(i)) for i in (10, 11, 12)]
        await until(lambda: batcher.pending == 3)
        running[1].cancel()  # cancelled while its batch runs: its result is dropped
        queued[0].cancel()  # cancelled while queued: never scored
        await asyncio.sleep(0)
        release.set()
        out = await asyncio.gather(*running, *queued, return_exceptions=True)
        after = await batcher.submit(5)
        await batcher.close()
        return out, after

    out, after = asyncio.run(main())
    assert out[0] == 0 and out[2] == 4 and out[4:] == [22, 24]
    assert isinstance(out[1], asyncio.CancelledError)
    assert isinstance(out[3], asyncio.CancelledError)
    assert after == 10
    assert calls[:2] == [[0, 1, 2], [11, 12]]


def test_close_finishes_queued_jobs_then_refuses_new_ones():
    release = threading.Event()

    def process(jobs):
        assert release.wait(10)
        return jobs

    async def main():
        batcher = MicroBatcher(process, max_batch=2, max_wait_s=0)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
        await until(lambda: batcher.pending == 3)  # [0, 1] is running, 2..4 queued
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit(99)
        release.set()
        await closing
        await batcher.close()  # idempotent
        assert batcher.pending == 0
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_close_before_any_submit_and_submit_after_close():
    async def main():
        batcher = MicroBatcher(doubler())
        await batcher.close()
        await batcher.close()
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit(1)

    asyncio.run(main())


def test_on_batch_gets_sizes_summing_to_the_jobs_and_its_errors_are_ignored():
    seen: list[tuple[int, float]] = []

    def on_batch(size: int, seconds: float) -> None:
        seen.append((size, seconds))
        raise RuntimeError("metrics backend down")  # must not break the batcher

    async def main():
        batcher = MicroBatcher(doubler(), max_batch=4, on_batch=on_batch)
        out = await asyncio.gather(*(batcher.submit(i) for i in range(23)))
        out.append(await batcher.submit(100))
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert out == [2 * i for i in range(23)] + [200]
    assert sum(size for size, _ in seen) == 24
    assert all(1 <= size <= 4 and seconds >= 0 for size, seconds in seen)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"max_batch": 0}, "max_batch"), ({"max_wait_s": -0.1}, "max_wait_s")],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        MicroBatcher(doubler(), **kwargs)


def test_a_batcher_left_open_when_its_loop_ends_refuses_instead_of_hanging():
    batcher = MicroBatcher(doubler())

    async def use():
        return await batcher.submit(1)

    assert asyncio.run(use()) == 2  # asyncio.run cancels the collector on the way out

    async def again():
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.submit(2)
        await batcher.close()

    asyncio.run(again())
