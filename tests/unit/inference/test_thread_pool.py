"""The thread pool and deadlines: a call stuck past its deadline is written off and replaced
(within a bound), a queued job's deadline counts from submission, and a result that comes
back after its deadline is discarded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from streamer.errors import InferenceTimeout
from streamer.inference.model import Output
from streamer.inference.pool import ThreadPool
from streamer.inference.scheduler import Scheduler


class GatedModel:
    """Inputs of 13 samples block until ``release``; the others answer at once."""

    name = "gated"
    sample_rate = 16000
    max_batch_size = 1

    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned = threading.Event()

    def infer(self, audio: NDArray[np.float32]) -> Output:
        if len(audio) == 13:
            self.release.wait(10)
            self.returned.set()
        return {"count": len(audio)}

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        return [self.infer(a) for a in batch]


def audio(n: int) -> NDArray[np.float32]:
    return np.zeros(n, dtype=np.float32)


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll a condition set by another thread (at most five seconds)."""
    until = time.monotonic() + 5.0
    while not condition():
        assert time.monotonic() < until, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_stuck_thread_is_written_off_replaced_and_its_late_result_discarded() -> None:
    model = GatedModel()
    pool = ThreadPool(model, 1, max_replacements=1)
    expired: list[int] = []
    sched = Scheduler(pool, sample_rate=16000, deadline=0.1, on_expired=expired.append)
    sched.start()
    try:
        stuck = sched.submit("a", audio(13))
        with pytest.raises(InferenceTimeout, match="running"):
            await stuck
        await wait_for(lambda: pool.stuck_workers == 1)
        # A replacement took the stuck thread's place: the next job runs at once.
        assert await sched.submit("b", audio(5)) == {"count": 5}
        assert (pool.written_off, pool.stuck_workers, pool.available_workers) == (1, 1, 1)
        model.release.set()
        await wait_for(lambda: pool.stuck_workers == 0)
        assert pool.available_workers == 1  # the stuck thread left; its replacement serves
        assert await sched.submit("c", audio(7)) == {"count": 7}
        assert expired == []
    finally:
        model.release.set()
        await sched.close(grace=1)


async def test_past_the_bound_capacity_is_lost_and_queued_jobs_expire_from_submission() -> None:
    model = GatedModel()
    pool = ThreadPool(model, 1, max_replacements=0)
    expired: list[int] = []
    sched = Scheduler(pool, sample_rate=16000, deadline=0.2, on_expired=expired.append)
    sched.start()
    try:
        stuck = sched.submit("a", audio(13))
        await asyncio.sleep(0.05)
        queued = sched.submit("b", audio(5))
        began = time.perf_counter()
        with pytest.raises(InferenceTimeout, match="running"):
            await stuck
        await wait_for(lambda: pool.stuck_workers == 1)  # the pool hears of it right after
        assert pool.available_workers == 0
        with pytest.raises(InferenceTimeout, match="waiting for a worker"):
            await queued
        assert time.perf_counter() - began < 1.0  # its own deadline, not the stuck thread's
        assert expired == [1] and sched.queued == 0
        # When the stuck thread returns, it serves again: the capacity comes back.
        model.release.set()
        await wait_for(lambda: pool.available_workers == 1)
        assert await sched.submit("c", audio(7)) == {"count": 7}
    finally:
        model.release.set()
        await sched.close(grace=1)


async def test_closing_fails_what_a_stuck_thread_holds() -> None:
    model = GatedModel()
    pool = ThreadPool(model, 1, max_replacements=0)
    sched = Scheduler(pool, sample_rate=16000)
    sched.start()
    job = sched.submit("a", audio(13))
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    await sched.close(grace=0.1)
    assert time.perf_counter() - began < 1.0
    assert job.done() and isinstance(job.exception(), Exception)
    model.release.set()
