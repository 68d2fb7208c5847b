"""The inference scheduler shared by every stream.

Streams submit jobs and hold tickets (``backend.Ticket``: awaitable, ``cancel()``); the
scheduler is the local ``InferenceBackend``, over any worker pool (threads, processes, Ray
Serve). One dispatcher task forms batches (``plan_batch`` picks them: the finals a
``finalize`` forced before other finals, finals before interims, streams round-robin, so no
stream starves behind a busy one) and hands them to the pool. A queued interim can be
withdrawn when a newer one supersedes it, and a queued final hastened to a forced one
(``Ticket.hasten``). Streams restore audio order themselves. A job's state is the scheduler's own.

The queue is bounded: past ``max_queued`` jobs, new interims are dropped at once (they are
only previews; the final of the same audio follows). Finals are always queued: each stream
bounds its own finals in flight, and admission refuses new streams while the backlog is
high, so the finals of admitted streams are never lost.

A deadline counts from submission: a job still queued when it passes fails at once with
``inference_timeout``, and a batch still running when its oldest job's passes fails, and
the pool is told to give up on it (a process is killed, a thread written off and replaced),
so a model that hangs costs its callers one error each but never stalls the queue.
Interims give way to finals when the model is the bottleneck: a batch that carries a final
carries no interim, an interim batch starts only while no final runs, and at most
``interim_workers`` of them at once (the cores are left to finals), and an interim that
waited longer than ``interim_max_wait`` is skipped (a newer interim or the final of the same
audio follows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.errors import InferenceTimeout, ModelCrashed, ModelFailed, StreamerError
from streamer.inference.backend import Ticket
from streamer.inference.model import ModelFailure, Output
from streamer.inference.pool import WorkerPool

log = logging.getLogger(__name__)


class _JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class _Job:
    """One inference request of one stream, and the ticket its submitter holds."""

    __slots__ = (
        "_future", "_scheduler", "audio", "enqueued", "expires", "final", "forced", "state",
        "stream", "timer", "words",
    )  # fmt: skip

    def __init__(
        self,
        scheduler: Scheduler,
        stream: str,
        audio: NDArray[np.float32],
        final: bool,
        future: asyncio.Future[Output],
        words: bool,
        forced: bool = False,
    ) -> None:
        self._scheduler = scheduler
        self._future = future
        self.stream = stream
        self.audio = audio
        self.final = final
        self.forced = forced
        """A final a ``finalize`` asked for: queued ahead of every other job."""
        self.words = words
        """Whether the result should carry word times (for a model that gives them)."""
        self.enqueued = time.perf_counter()
        self.state = _JobState.QUEUED
        self.expires: float | None = None
        """``perf_counter`` time past which the job fails with ``inference_timeout``."""
        self.timer: asyncio.TimerHandle | None = None

    # -- the ticket (``backend.Ticket``) ---------------------------------------------------

    def __await__(self) -> Generator[Any, None, Output]:
        # Through a waiter of its own: cancelling the task that awaits withdraws nothing
        # (only ``cancel`` does), as with ``asyncio.wait``.
        future = self._future
        if not future.done():
            waiter = future.get_loop().create_future()
            future.add_done_callback(partial(_wake, waiter))
            yield from waiter
        return future.result()

    def cancel(self) -> bool:
        """Withdraw the job if no worker has taken it yet."""
        return self._scheduler._withdraw(self)

    def hasten(self) -> None:
        self._scheduler._hasten(self)

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def exception(self) -> BaseException | None:
        return self._future.exception()

    def add_done_callback(self, callback: Callable[[Ticket], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))

    # -- the scheduler's side --------------------------------------------------------------

    def _drop(self) -> None:
        self.state = _JobState.CANCELLED
        self._future.cancel()
        if self.timer is not None:
            self.timer.cancel()

    def _resolve(self, result: Output | StreamerError) -> None:
        self.state = _JobState.DONE
        if self.timer is not None:
            self.timer.cancel()
        if self._future.done():
            return
        if isinstance(result, StreamerError):
            self._future.set_exception(result)
        else:
            self._future.set_result(result)


def _wake(waiter: asyncio.Future[None], _: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


def plan_batch(
    finals: Mapping[str, int],
    interims: Mapping[str, int],
    limit: int,
    *,
    interims_allowed: bool,
    forced: Mapping[str, int] | None = None,
) -> list[str]:
    """Which streams the next batch takes a job from, one entry per job, in order.

    ``forced``, ``finals`` and ``interims`` are the jobs each stream has waiting, in
    round-robin order (the stream served longest ago first). Forced finals (a
    ``finalize`` waits on them) only while any wait; else finals while any wait; else
    interims, when ``interims_allowed``. One level a batch, so a forced final never waits
    for a bigger batch's decode. Each round takes one job per stream, so no stream
    starves behind a busy one; up to ``limit`` jobs.
    """
    waiting = forced if forced else finals if finals else interims if interims_allowed else {}
    picks: list[str] = []
    depth = 0
    while len(picks) < limit:
        taken = len(picks)
        for stream, count in waiting.items():
            if count > depth:
                picks.append(stream)
                if len(picks) >= limit:
                    break
        if len(picks) == taken:
            break
        depth += 1
    return picks


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one dispatched batch cost; handed to observers."""

    size: int
    queue_wait: tuple[float, ...]
    run_seconds: float
    audio_seconds: float
    failures: int
    crashes: int
    timeouts: int = 0
    """Inputs failed with ``inference_timeout`` (then ``run_seconds`` is the deadline)."""


Observer = Callable[[BatchStats], None]


class Scheduler:
    """Queues jobs from all streams and runs them through a worker pool."""

    def __init__(
        self,
        pool: WorkerPool,
        *,
        sample_rate: int,
        max_batch: int = 1,
        max_wait: float = 0.0,
        deadline: float | None = None,
        observer: Observer | None = None,
        max_queued: int | None = None,
        on_expired: Callable[[int], None] | None = None,
        interim_max_wait: float | None = None,
        interim_workers: int | None = None,
    ) -> None:
        self.pool = pool
        self.sample_rate = sample_rate
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait
        self.deadline = deadline
        self.observer = observer
        self.max_queued = max_queued
        self.interim_max_wait = interim_max_wait
        self.interim_workers = interim_workers
        self._interim_busy = 0
        self.interims_dropped = 0
        """Interims refused because the queue was full."""
        self.expired = 0
        """Jobs failed with ``inference_timeout`` while still queued."""
        self.on_expired = on_expired
        self.interims_skipped = 0
        """Queued interims skipped because they waited past ``interim_max_wait``."""
        # Only jobs still waiting, per stream, in round-robin order (withdrawn ones leave).
        self._forced: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._finals: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._interims: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._queued = 0
        self._busy = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(pool.workers)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return self._queued

    @property
    def busy(self) -> int:
        """Workers running a batch now."""
        return self._busy

    @property
    def behind(self) -> bool:
        """Every worker is busy and finals wait: a decode submitted now starts late."""
        return self._busy >= self.pool.workers and bool(self._forced or self._finals)

    @property
    def full(self) -> bool:
        """Whether the queue holds ``max_queued`` jobs (new interims are being dropped)."""
        return self.max_queued is not None and self._queued >= self.max_queued

    def oldest_wait(self) -> float:
        """Seconds the longest-waiting queued job has waited (0 when none waits)."""
        now = time.perf_counter()
        oldest = now
        for queues in (self._forced, self._finals, self._interims):
            for queue in queues.values():
                oldest = min(oldest, queue[0].enqueued)
        return now - oldest

    def queued_for(self, stream: str) -> int:
        """Jobs of one stream still waiting (not cancelled)."""
        return sum(len(q.get(stream, ())) for q in (self._forced, self._finals, self._interims))

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch(), name="scheduler-dispatch")

    async def close(self, grace: float = 10.0) -> None:
        """Withdraw queued jobs, give running batches ``grace`` seconds, close the pool."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for stream in {*self._forced, *self._finals, *self._interims}:
            self.cancel_stream(stream)
        if self._running:
            await asyncio.wait(self._running, timeout=grace)
        # Closing the pool fails what is still waiting for a worker (one that never
        # started, say); then every batch has an outcome.
        await self.pool.close()
        await asyncio.gather(*self._running, return_exceptions=True)

    def submit(
        self,
        stream: str,
        audio: NDArray[np.float32],
        *,
        final: bool = True,
        words: bool = False,
        forced: bool = False,
    ) -> Ticket:
        """Queue one inference; awaiting the ticket gives the result (or a typed error).

        An interim submitted while the queue is full comes back already cancelled; a
        ``forced`` final goes ahead of every other queued job.
        """
        loop = asyncio.get_running_loop()
        job = _Job(self, stream, audio, final, loop.create_future(), words, final and forced)
        if not final and self.full:
            job._drop()
            self.interims_dropped += 1
            return job
        if self.deadline is not None:
            job.expires = job.enqueued + self.deadline
            job.timer = loop.call_later(self.deadline, self._expire, job)
        self._queue_of(job).setdefault(stream, deque()).append(job)
        self._queued += 1
        self._wakeup.set()
        return job

    def _queue_of(self, job: _Job) -> OrderedDict[str, deque[_Job]]:
        return self._forced if job.forced else self._finals if job.final else self._interims

    def _hasten(self, job: _Job) -> None:
        """A queued final becomes a forced one (``Ticket.hasten``)."""
        if job.state is not _JobState.QUEUED or job.forced or not job.final:
            return
        queue = self._finals.get(job.stream)
        if queue is None or job not in queue:
            return  # taken into a batch being formed
        self._unqueue(job)
        job.forced = True
        self._forced.setdefault(job.stream, deque()).append(job)
        self._queued += 1
        self._wakeup.set()

    def _withdraw(self, job: _Job) -> bool:
        """Take a job no worker has taken yet out of its queue (``Ticket.cancel``)."""
        if job.state is not _JobState.QUEUED:
            return False
        self._unqueue(job)
        job._drop()
        return True

    def _unqueue(self, job: _Job) -> None:
        """Out of its queue, if it is still there (not taken into a batch being formed)."""
        queues = self._queue_of(job)
        queue = queues.get(job.stream)
        if queue is None or job not in queue:
            return
        queue.remove(job)
        if not queue:
            del queues[job.stream]
        self._queued -= 1

    def _expire(self, job: _Job) -> None:
        """A queued job's deadline passed before any worker took it."""
        if job.state is not _JobState.QUEUED:
            return  # running: its batch keeps the time
        self._unqueue(job)
        self.expired += 1
        if self.on_expired is not None:
            self.on_expired(1)
        job._resolve(InferenceTimeout(self._timeout_message("waiting for a worker")))

    def _timeout_message(self, doing: str) -> str:
        return f"no result within the deadline of {self.deadline} s ({doing})"

    def cancel_stream(self, stream: str) -> int:
        """Withdraw every queued job of a stream (on disconnect); returns how many."""
        count = 0
        for queues in (self._forced, self._finals, self._interims):
            for job in queues.pop(stream, ()):
                job._drop()
                count += 1
        self._queued -= count
        return count

    def _take(self, limit: int, *, interims: bool = True) -> list[_Job]:
        """Up to ``limit`` jobs as ``plan_batch`` picks them: forced finals, else finals,
        else interims (when ``interims`` allows them)."""
        self._skip_stale_interims()
        forced, finals, waiting = self._forced, self._finals, self._interims
        picks = plan_batch(
            {stream: len(queue) for stream, queue in finals.items()},
            # Counted only when they may go: no final waits and interims are allowed.
            {stream: len(queue) for stream, queue in waiting.items()}
            if interims and not finals and not forced
            else {},
            limit,
            interims_allowed=interims,
            forced={stream: len(queue) for stream, queue in forced.items()},
        )
        queues = forced if forced else finals if finals else waiting
        batch: list[_Job] = []
        for stream in picks:
            queue = queues[stream]
            batch.append(queue.popleft())
            if queue:
                queues.move_to_end(stream)
            else:
                del queues[stream]
        self._queued -= len(batch)
        return batch

    def _skip_stale_interims(self) -> None:
        if self.interim_max_wait is None:
            return
        too_old = time.perf_counter() - self.interim_max_wait
        stale = [
            job for queue in self._interims.values() for job in queue if job.enqueued < too_old
        ]
        for job in stale:
            self._withdraw(job)
        self.interims_skipped += len(stale)

    def _interims_allowed(self) -> bool:
        """Whether an interim batch may start: no final runs, and fewer than
        ``interim_workers`` interim batches do."""
        if self.interim_workers is None:
            return True
        return self._busy == self._interim_busy < self.interim_workers

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            batch = self._take(self.max_batch, interims=self._interims_allowed())
            while not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                batch = self._take(self.max_batch, interims=self._interims_allowed())
            if len(batch) < self.max_batch and self.max_wait > 0:
                until = time.perf_counter() + self.max_wait
                while len(batch) < self.max_batch:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except TimeoutError:
                        break
                    more = self._take(self.max_batch - len(batch), interims=False)
                    if batch[0].final or not more:
                        batch += more
                    else:  # finals came: they go first, the interims wait
                        self._requeue(batch)
                        batch = more
                # Withdrawn or expired while the batch formed: not run.
                batch = [job for job in batch if job.state is _JobState.QUEUED]
                if not batch:
                    self._slots.release()
                    continue
            for job in batch:
                job.state = _JobState.RUNNING
            # Counted now, not when the task starts: the next dispatch must see them.
            self._busy += 1
            self._interim_busy += not batch[0].final
            task = asyncio.create_task(self._execute(batch), name="scheduler-batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _requeue(self, jobs: list[_Job]) -> None:
        """Put taken interims back at the head of their streams' queues."""
        for job in reversed(jobs):
            if job.state is not _JobState.QUEUED:
                continue  # withdrawn or expired meanwhile
            self._interims.setdefault(job.stream, deque()).appendleft(job)
            self._queued += 1

    async def _execute(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        waits = tuple(started - job.enqueued for job in batch)
        words = [job.words for job in batch] if any(job.words for job in batch) else None
        run = asyncio.ensure_future(self.pool.run([job.audio for job in batch], words))
        expiries = [job.expires for job in batch if job.expires is not None]
        left = max(0.0, min(expiries) - started) if expiries else None
        try:
            try:
                results = await asyncio.wait_for(asyncio.shield(run), left)
            except TimeoutError:
                for job in batch:
                    job._resolve(InferenceTimeout(self._timeout_message("running")))
                self._observe(batch, waits, started, timeouts=len(batch))
                # The pool gives the worker's place back: a process is killed, a thread
                # written off and replaced. A thread it cannot replace keeps the place
                # taken (``run`` returns when the thread does).
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                return
            except StreamerError as exc:  # the pool gave up on the batch (it closed, say)
                results = [exc] * len(batch)
            except Exception as exc:
                log.exception("worker pool failed")
                results = [exc] * len(batch)
            failures = crashes = 0
            for job, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    error = self._classify(result)
                    failures += isinstance(error, ModelFailed)
                    crashes += not isinstance(error, ModelFailed)
                    job._resolve(error)
                else:
                    job._resolve(result)
            self._observe(batch, waits, started, failures=failures, crashes=crashes)
        finally:
            self._busy -= 1
            self._interim_busy -= not batch[0].final
            self._slots.release()
            self._wakeup.set()  # interims held back by interim_workers may go now

    def _observe(
        self,
        batch: list[_Job],
        waits: tuple[float, ...],
        started: float,
        *,
        failures: int = 0,
        crashes: int = 0,
        timeouts: int = 0,
    ) -> None:
        if self.observer is None:
            return
        self.observer(
            BatchStats(
                size=len(batch),
                queue_wait=waits,
                run_seconds=time.perf_counter() - started,
                audio_seconds=sum(len(j.audio) for j in batch) / self.sample_rate,
                failures=failures,
                crashes=crashes,
                timeouts=timeouts,
            )
        )

    @staticmethod
    def _classify(exc: Exception) -> StreamerError:
        if isinstance(exc, StreamerError):
            return exc
        if isinstance(exc, ModelFailure):
            return ModelFailed(str(exc) or "the model failed on this input")
        log.error("model crashed", exc_info=exc)
        return ModelCrashed("inference failed inside the model")
