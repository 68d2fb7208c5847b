"""The shared scheduler: priorities, fairness, cancellation, typed failures, deadlines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from streamer.errors import InferenceTimeout, ModelCrashed, ModelFailed
from streamer.inference.backend import Ticket
from streamer.inference.model import ModelFailure, Output, TestModel
from streamer.inference.pool import ThreadPool
from streamer.inference.scheduler import BatchStats, Scheduler


def audio(n: int) -> NDArray[np.float32]:
    return np.zeros(n, dtype=np.float32)


class RecordingModel:
    """Records the order and batches it sees; fails or crashes on marked inputs."""

    name = "recording"
    sample_rate = 16000

    def __init__(self, max_batch_size: int = 1, delay: float = 0.0) -> None:
        self.max_batch_size = max_batch_size
        self.delay = delay
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def infer(self, audio: NDArray[np.float32]) -> Output:
        out = self.infer_batch([audio])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        self.gate.wait(5)
        if self.delay:
            threading.Event().wait(self.delay)
        self.calls.append([len(a) for a in batch])
        out: list[Output | Exception] = []
        for a in batch:
            if len(a) == 4242:
                out.append(ModelFailure("forty-two"))
            elif len(a) == 6666:
                out.append(RuntimeError("boom"))
            else:
                out.append({"count": len(a)})
        return out


async def until(check: Callable[[], bool]) -> None:
    """Until the scheduler reaches the state ``check`` names (a generous bound for a busy
    machine; the state, not the time, is what the tests wait on)."""
    async with asyncio.timeout(30):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def make(model: RecordingModel, workers: int = 1, **kw: float | int) -> Scheduler:
    sched = Scheduler(
        ThreadPool(model, workers), sample_rate=16000, max_batch=model.max_batch_size, **kw
    )
    sched.start()
    return sched


async def test_results_arrive_on_each_jobs_future() -> None:
    sched = await make(RecordingModel(), workers=2)
    jobs = [sched.submit("s", audio(n)) for n in range(1, 20)]
    results = await asyncio.gather(*(j for j in jobs))
    assert [r["count"] for r in results] == list(range(1, 20))
    await sched.close()


async def test_failures_and_crashes_become_typed_errors() -> None:
    sched = await make(RecordingModel())
    ok, fail, crash = (sched.submit("s", audio(n)) for n in (5, 4242, 6666))
    assert (await ok)["count"] == 5
    with pytest.raises(ModelFailed, match="forty-two"):
        await fail
    with pytest.raises(ModelCrashed) as info:
        await crash
    assert "boom" not in info.value.message  # crashes get a generic message
    await sched.close()


async def test_finals_run_before_interims_and_streams_take_turns() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model)
    first = sched.submit("busy", audio(1))
    await until(lambda: sched.busy == 1)  # the worker now holds `first`, blocked on the gate
    for n in range(100, 110):
        sched.submit("busy", audio(n))
    sched.submit("quiet", audio(2), final=False)
    sched.submit("quiet", audio(3))
    sched.submit("other", audio(4))
    model.gate.set()
    await first
    await until(lambda: not sched.queued and not sched.busy and len(model.calls) == 14)
    order = [c[0] for c in model.calls]
    assert order[0] == 1
    # Round-robin over streams: the quiet streams are served before the busy one's backlog.
    assert order.index(3) < order.index(101) and order.index(4) < order.index(102)
    # The interim goes last, after every final.
    assert order[-1] == 2
    await sched.close()


async def test_a_forced_final_and_a_hastened_one_go_ahead_of_every_queued_job() -> None:
    model = RecordingModel(max_batch_size=4)
    model.gate.clear()
    sched = await make(model)
    first = sched.submit("busy", audio(1))
    await until(lambda: sched.busy == 1)
    for n in range(100, 104):
        sched.submit("busy", audio(n))
    sched.submit("a", audio(5), final=False)
    hastened = sched.submit("b", audio(6))
    sched.submit("c", audio(7), forced=True)
    hastened.hasten()
    hastened.hasten()  # twice is once
    model.gate.set()
    await first
    await until(lambda: not sched.queued and not sched.busy)
    # The forced final and the hastened one ride alone, ahead of the queued finals (in
    # their streams' turn), and the interim goes last.
    assert model.calls == [[1], [7, 6], [100, 101, 102, 103], [5]]
    await sched.close()


async def test_batches_form_across_streams() -> None:
    model = RecordingModel(max_batch_size=8)
    model.gate.clear()
    stats: list[BatchStats] = []
    sched = Scheduler(ThreadPool(model, 1), sample_rate=16000, max_batch=8, observer=stats.append)
    sched.start()
    blocker = sched.submit("x", audio(1))
    await until(lambda: sched.busy == 1)
    jobs = [sched.submit(f"s{i}", audio(10 + i)) for i in range(12)]
    model.gate.set()
    await asyncio.gather(blocker, *(j for j in jobs))
    assert [len(c) for c in model.calls] == [1, 8, 4]
    assert [s.size for s in stats] == [1, 8, 4]
    await sched.close()


async def test_a_queued_job_can_be_cancelled_but_a_running_one_cannot() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model)
    running = sched.submit("s", audio(1))
    await asyncio.sleep(0.05)
    queued = sched.submit("s", audio(2), final=False)
    assert queued.cancel()
    assert not running.cancel()
    assert queued.cancelled()
    assert sched.queued == 0
    model.gate.set()
    await running
    assert model.calls == [[1]]
    await sched.close()


async def test_cancel_stream_withdraws_all_its_queued_work() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model)
    sched.submit("gone", audio(1))
    await asyncio.sleep(0.05)
    for n in range(2, 6):
        sched.submit("gone", audio(n))
    keep = sched.submit("stays", audio(7))
    assert sched.queued_for("gone") == 4
    assert sched.cancel_stream("gone") == 4
    assert sched.queued == 1
    model.gate.set()
    await keep
    assert [c[0] for c in model.calls] == [1, 7]
    await sched.close()


async def test_an_inference_past_its_deadline_fails_with_inference_timeout() -> None:
    stats: list[BatchStats] = []
    model = RecordingModel()
    model.gate.clear()  # the model does not return until the test lets it
    sched = Scheduler(
        ThreadPool(model, 1),
        sample_rate=16000,
        deadline=0.05,
        observer=stats.append,
    )
    sched.start()
    job = sched.submit("s", audio(4))
    with pytest.raises(InferenceTimeout):
        await job
    assert not model.calls  # failed at its deadline, not when the model returned
    model.gate.set()
    await sched.close()
    [batch] = stats
    assert (batch.size, batch.timeouts, batch.failures, batch.crashes) == (1, 1, 0, 0)
    assert batch.run_seconds >= 0.05


async def test_the_test_model_presets() -> None:
    speedy = TestModel.speedy()
    assert speedy.infer(audio(480)) == {"count": 480}
    flaky = TestModel.flaky(seed=1)
    outcomes = [flaky.infer_batch([audio(1)])[0] for _ in range(200)]
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert 30 < len(errors) < 90  # about 30% fail or crash
    assert any(isinstance(o, ModelFailure) for o in errors)
    assert any(not isinstance(o, ModelFailure) for o in errors)


class StartRecordingModel(RecordingModel):
    """Records each call as it starts (one worker: calls never overlap), then works a while."""

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        self.calls.append([len(a) for a in batch])
        threading.Event().wait(self.delay)
        return [{"count": len(a)} for a in batch]


async def test_a_busy_stream_delays_the_others_by_a_bounded_number_of_batches() -> None:
    max_batch, quiet_streams = 4, 10
    model = StartRecordingModel(max_batch_size=max_batch, delay=0.002)
    sched = await make(model)
    submitted_at: dict[int, int] = {}  # job length -> batches started before it was queued
    jobs = []
    for n in range(10_000, 10_200):  # the busy stream queues 200 finals at once
        jobs.append(sched.submit("busy", audio(n)))
    rng = np.random.default_rng(7)
    length = 1
    for _ in range(60):  # quiet streams queue a final now and then, while the busy one runs
        await asyncio.sleep(float(rng.uniform(0, 0.004)))
        submitted_at[length] = len(model.calls)
        jobs.append(sched.submit(f"quiet{rng.integers(quiet_streams)}", audio(length)))
        length += 1
    await asyncio.gather(*(j for j in jobs))
    await sched.close()
    started_in = {n: i for i, call in enumerate(model.calls) for n in call}
    waits = [started_in[n] - before for n, before in submitted_at.items()]
    # Round-robin over at most 11 streams with queued work, 4 jobs a batch: a quiet job
    # waits behind at most one job of each stream per round, never the busy backlog.
    assert max(waits) <= 4, waits
    ran = sorted(n for call in model.calls for n in call)
    assert ran == sorted([*range(10_000, 10_200), *submitted_at])  # everything ran, once
    # Within one stream, jobs start in the order they were queued.
    busy_order = [n for call in model.calls for n in call if n >= 10_000]
    assert busy_order == sorted(busy_order)


async def test_every_streams_results_arrive_in_audio_order_under_load() -> None:
    from streamer.audio.formats import AudioFormat
    from streamer.events import Event, SegmentResult
    from streamer.pipeline import Route, StreamOptions, StreamPipeline

    model = TestModel.speedy(jitter=0.004, batch_size=4, seed=3)
    sched = Scheduler(ThreadPool(model, 3), sample_rate=16000, max_batch=4, max_wait=0.001)
    sched.start()
    fmt = AudioFormat(channels=1, sample_rate=16000, bit_depth=16, is_float=False)
    options = StreamOptions(route=Route.SIMPLE, fmt=fmt, model_rate=16000, chunk_seconds=0.05)
    events: dict[str, list[Event]] = {}
    pipelines = {}
    for name in ["busy", *(f"quiet{i}" for i in range(15))]:
        events[name] = []
        pipelines[name] = StreamPipeline(name, options, backend=sched, emit=events[name].append)
        pipelines[name].start()
    chunk = np.zeros(800, dtype="<i2").tobytes()  # 50 ms: one inference per chunk

    async def stream(name: str, chunks: int) -> None:
        for _ in range(chunks):
            await pipelines[name].feed(chunk)
            await asyncio.sleep(0)
        await pipelines[name].finish()

    await asyncio.gather(stream("busy", 400), *(stream(f"quiet{i}", 20) for i in range(15)))
    await sched.close()
    for name, got in events.items():
        segments = [e for e in got if isinstance(e, SegmentResult)]
        spans = [(s.start, s.end) for s in segments]
        expected = [(round(i * 0.05, 6), round((i + 1) * 0.05, 6)) for i in range(len(spans))]
        assert spans == expected, name
        assert len(spans) == (400 if name == "busy" else 20)
        assert type(got[-1]).__name__ == "Done"


async def test_a_full_queue_drops_new_interims_but_never_finals() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model, max_queued=3)
    running = sched.submit("s", audio(1))
    await asyncio.sleep(0.05)
    finals = [sched.submit("s", audio(n)) for n in (2, 3, 4)]
    assert sched.full
    interim = sched.submit("t", audio(5), final=False)
    assert interim.cancelled()
    assert sched.interims_dropped == 1
    late_final = sched.submit("t", audio(6))
    assert sched.queued == 4 and sched.oldest_wait() > 0
    model.gate.set()
    await asyncio.gather(running, *(j for j in finals), late_final)
    assert sorted(c[0] for c in model.calls) == [1, 2, 3, 4, 6]
    assert not sched.full and sched.oldest_wait() == 0
    await sched.close()


class WordsRecordingModel(RecordingModel):
    """A model that gives word times: records which inputs asked for them."""

    word_times = True

    def __init__(self, max_batch_size: int = 1) -> None:
        super().__init__(max_batch_size)
        self.asked: list[list[bool] | None] = []

    def infer_batch(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        self.asked.append(None if words is None else list(words))
        return super().infer_batch(batch)


async def test_a_jobs_word_times_request_reaches_the_model_with_its_batch() -> None:
    model = WordsRecordingModel(max_batch_size=4)
    model.gate.clear()
    sched = await make(model)
    blocker = sched.submit("x", audio(1))
    await asyncio.sleep(0.05)
    jobs = [sched.submit(f"s{i}", audio(10 + i), words=i % 2 == 1) for i in range(4)]
    model.gate.set()
    await asyncio.gather(blocker, *(j for j in jobs))
    # Nobody asked for the first batch's words, so the model got no flags at all.
    assert model.asked == [None, [False, True, False, True]]
    await sched.close()


async def test_a_model_without_word_times_is_never_asked() -> None:
    model = RecordingModel(max_batch_size=4)  # infer_batch takes the batch alone
    sched = await make(model)
    job = sched.submit("s", audio(7), words=True)
    assert (await job) == {"count": 7}
    await sched.close()


async def test_a_batch_that_carries_finals_carries_no_interims() -> None:
    model = RecordingModel(max_batch_size=8)
    model.gate.clear()
    sched = await make(model)
    sched.submit("x", audio(1))
    await until(lambda: sched.busy == 1)
    for i in range(3):
        sched.submit(f"i{i}", audio(100 + i), final=False)
        sched.submit(f"f{i}", audio(10 + i))
    model.gate.set()
    while sched.queued or sched.busy:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert model.calls == [[1], [10, 11, 12], [100, 101, 102]]
    await sched.close()


async def test_interims_leave_the_other_workers_to_finals() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model, workers=3, interim_workers=1)
    interims = [sched.submit(f"s{i}", audio(100 + i), final=False) for i in range(3)]
    await until(lambda: sched.busy == 1)
    assert sched.queued == 2  # one interim runs; the other workers wait for finals
    final = sched.submit("f", audio(5))
    await until(lambda: sched.busy == 2)  # the final took a free worker
    model.gate.set()
    await asyncio.gather(final, *(j for j in interims))
    assert [c[0] for c in model.calls].index(5) < 2
    # While a final runs, no interim starts.
    model.gate.clear()
    running = sched.submit("f", audio(6))
    later = sched.submit("s0", audio(200), final=False)
    await until(lambda: sched.busy == 1)
    assert sched.queued_for("s0") == 1 and not later.done()
    model.gate.set()
    await asyncio.gather(running, later)
    await sched.close()


async def test_an_interim_that_waited_too_long_is_skipped_and_finals_never_are() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model, interim_max_wait=0.05)
    running = sched.submit("s", audio(1))
    await asyncio.sleep(0.02)
    stale = sched.submit("t", audio(2), final=False)
    final = sched.submit("t", audio(3))
    await asyncio.sleep(0.1)  # both waited past 50 ms behind the blocked worker
    model.gate.set()
    await asyncio.gather(running, final)
    await asyncio.sleep(0.02)
    assert stale.cancelled()
    assert sched.interims_skipped == 1
    assert [c[0] for c in model.calls] == [1, 3]
    await sched.close()


async def test_cancelling_a_task_that_awaits_a_ticket_withdraws_nothing() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model)
    running = sched.submit("s", audio(1))
    queued = sched.submit("s", audio(2))
    waiter = asyncio.ensure_future(_wait(queued))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert not queued.cancelled() and sched.queued_for("s") == 1
    model.gate.set()
    assert (await running) == {"count": 1} and (await queued) == {"count": 2}
    await sched.close()


async def _wait(ticket: Ticket) -> Output:
    return await ticket


async def test_it_is_behind_while_every_worker_is_busy_and_finals_wait() -> None:
    model = RecordingModel()
    model.gate.clear()
    sched = await make(model)  # one worker
    first = sched.submit("a", audio(1))
    await until(lambda: sched.busy == 1)
    assert not sched.behind  # busy, but nothing waits
    interim = sched.submit("b", audio(2), final=False)
    assert not sched.behind  # an interim waiting delays no final
    waiting = sched.submit("c", audio(3))
    assert sched.behind
    model.gate.set()
    await first
    await waiting
    await interim
    await until(lambda: not sched.queued and not sched.busy)
    assert not sched.behind
    await sched.close()
