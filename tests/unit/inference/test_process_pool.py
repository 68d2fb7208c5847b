"""The process pool: results, typed failures, crash isolation, deadlines and shutdown.

Workers are real processes; the test model kills its own process (SIGKILL) on inputs of a
marked length, as a native crash in a model would.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from streamer.errors import InferenceTimeout, ModelCrashed, ModelFailed, WorkerCrashed
from streamer.inference.model import TestModel
from streamer.inference.model import TestModelParams as Params
from streamer.inference.process_pool import ProcessPool, RemoteModelError
from streamer.inference.scheduler import Scheduler

KILLER = 666  # the test model kills its worker on inputs of exactly this many samples
READY_TIMEOUT = 30.0


def audio(n: int) -> NDArray[np.float32]:
    return np.zeros(n, dtype=np.float32)


def factory(**params: Any) -> functools.partial[TestModel]:
    return functools.partial(TestModel, Params(**params))


async def make_pool(workers: int = 2, **params: Any) -> ProcessPool:
    params.setdefault("panic_on_samples", KILLER)
    params.setdefault("panic_kills_process", True)
    pool = ProcessPool(factory(**params), workers)
    async with asyncio.timeout(READY_TIMEOUT):
        await pool.wait_ready()
    return pool


def counts(results: list[Any]) -> list[Any]:
    return [r["count"] if isinstance(r, dict) else type(r) for r in results]


async def test_a_batch_runs_in_a_worker_process_and_keeps_its_order() -> None:
    pool = await make_pool(batch_size=8)
    try:
        assert len(pool.pids()) == 2 and os.getpid() not in pool.pids()
        assert counts(await pool.run([audio(n) for n in (3, 1, 2)])) == [3, 1, 2]
        assert await pool.run([]) == []
    finally:
        await pool.close()
    assert pool.pids() == []


async def test_model_failures_and_exceptions_come_back_as_picklable_errors() -> None:
    pool = await make_pool(failure_rate=1.0)
    try:
        [failure] = await pool.run([audio(10)])
    finally:
        await pool.close()
    assert type(failure).__name__ == "ModelFailure"
    pool = await make_pool(panic_kills_process=False)
    try:
        [panic] = await pool.run([audio(KILLER)])
    finally:
        await pool.close()
    assert isinstance(panic, RemoteModelError) and "ModelPanic" in str(panic)
    assert pool.lost == 0


async def test_a_dead_worker_fails_only_its_request_and_is_replaced() -> None:
    pool = await make_pool(workers=2)
    sched = Scheduler(pool, sample_rate=16000)
    sched.start()
    try:
        before = set(pool.pids())
        busy = [sched.submit("busy", audio(100 + i)) for i in range(40)]
        victim = [sched.submit("victim", audio(n)) for n in (10, KILLER, 20, 30)]
        results = await asyncio.gather(*(j for j in busy + victim), return_exceptions=True)
        ok1, crashed, ok2, ok3 = results[-4:]
        assert isinstance(crashed, WorkerCrashed) and crashed.code == "worker_crashed"
        assert [ok1, ok2, ok3] == [{"count": 10}, {"count": 20}, {"count": 30}]
        assert counts(results[:40]) == list(range(100, 140))
        assert pool.lost == 1
        async with asyncio.timeout(READY_TIMEOUT):
            await pool.wait_ready()
        after = set(pool.pids())
        assert len(after) == 2 and len(after - before) == 1  # one worker was replaced
        # The pool goes on serving on the replacement.
        assert (await sched.submit("victim", audio(40))) == {"count": 40}
    finally:
        await sched.close()


async def test_a_crash_in_a_batch_fails_only_the_input_that_caused_it() -> None:
    pool = await make_pool(workers=1, batch_size=8)
    try:
        batch = [audio(n) for n in (1, 2, KILLER, 4)]
        results = await pool.run(batch)
    finally:
        await pool.close()
    assert counts(results) == [1, 2, WorkerCrashed, 4]
    assert pool.lost == 2  # the batch's worker, then the one that ran the input alone


async def test_the_scheduler_turns_crashes_and_model_errors_into_typed_errors() -> None:
    pool = await make_pool(panic_kills_process=False)
    sched = Scheduler(pool, sample_rate=16000)
    sched.start()
    try:
        with pytest.raises(ModelCrashed):
            await sched.submit("s", audio(KILLER))
        assert (await sched.submit("s", audio(5))) == {"count": 5}
    finally:
        await sched.close()
    pool = await make_pool(failure_rate=1.0)
    sched = Scheduler(pool, sample_rate=16000)
    sched.start()
    try:
        with pytest.raises(ModelFailed):
            await sched.submit("s", audio(5))
    finally:
        await sched.close()


async def test_past_the_deadline_the_worker_is_killed_and_replaced() -> None:
    pool = await make_pool(workers=1, delay=30.0)
    sched = Scheduler(pool, sample_rate=16000, deadline=0.2)
    sched.start()
    try:
        before = pool.pids()
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(InferenceTimeout):
            await sched.submit("s", audio(10))
        assert loop.time() - began < 5.0
        while sched.busy:  # noqa: ASYNC110 (the slot frees once the worker is gone)
            await asyncio.sleep(0.01)
        assert pool.started == 2 and pool.lost == 0  # stopped on purpose, not lost
        async with asyncio.timeout(READY_TIMEOUT):
            await pool.wait_ready()
        assert pool.pids() != before
    finally:
        await sched.close()


async def test_close_fails_waiting_requests_when_no_worker_can_start() -> None:
    pool = ProcessPool(functools.partial(TestModel, "not parameters"), 1)  # type: ignore[arg-type]
    run = asyncio.ensure_future(pool.run([audio(1)]))
    await asyncio.sleep(0.3)  # the worker fails to build its model, and is retried
    assert not run.done() and pool.ready_workers == 0
    await pool.close()
    assert counts(await run) == [WorkerCrashed]
    assert pool.pids() == []


async def test_the_scheduler_closes_even_when_no_worker_ever_starts() -> None:
    pool = ProcessPool(functools.partial(TestModel, "not parameters"), 1)  # type: ignore[arg-type]
    sched = Scheduler(pool, sample_rate=16000)
    sched.start()
    job = sched.submit("s", audio(1))
    await asyncio.sleep(0.2)
    await sched.close(grace=0.2)
    with pytest.raises(WorkerCrashed):
        await job


def test_large_requests_pass_under_uvloop_as_the_server_runs_it() -> None:
    # uvloop makes a watched pipe non-blocking; a request larger than the pipe's buffer
    # (10 s of audio, twice) must still arrive whole.
    import uvloop

    async def run() -> list[Any]:
        pool = await make_pool(1, batch_size=8)
        try:
            return await pool.run([audio(160_000), audio(160_001)])
        finally:
            await pool.close()

    assert uvloop.run(run()) == [{"count": 160_000}, {"count": 160_001}]
