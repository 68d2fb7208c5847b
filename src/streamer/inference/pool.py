"""Worker pools: where blocking model code runs, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from streamer.errors import WorkerCrashed
from streamer.inference.model import Model, Output, WordTimedModel, wants_word_times

log = logging.getLogger(__name__)


class WorkerPool(Protocol):
    """Runs batches of inputs through a model on workers."""

    workers: int
    """How many batches can run at once."""
    preemptible: bool
    """Whether cancelling ``run`` stops the model (a process can be killed, a thread not)."""

    @property
    def available_workers(self) -> int:
        """Workers that can take a batch now or once free (not lost, not stuck)."""
        ...

    @property
    def stuck_workers(self) -> int:
        """Workers written off past a deadline and still inside the model."""
        ...

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        """One output or exception per input, in order; ``words``: which inputs want word
        times (for a model that gives them).

        Cancelling it gives up on the batch and frees its worker's place: a process pool
        kills the worker and starts another; a thread pool writes the thread off and starts
        another (within its bound; past it, ``run`` returns only when the thread does).
        """
        ...

    async def close(self) -> None: ...


def call_model(
    model: Model, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
) -> list[Output | Exception]:
    """Run one batch, turning exceptions into per-item results."""
    try:
        if wants_word_times(model, words):
            assert isinstance(model, WordTimedModel) and words is not None
            return model.infer_batch(batch, words)
        if len(batch) == 1 and model.max_batch_size == 1:
            return [model.infer(batch[0])]
        return model.infer_batch(batch)
    except Exception as exc:  # the model's fault: report it for every item of the call
        return [exc] * len(batch)


@dataclass(eq=False, slots=True)
class _Work:
    """One batch handed to the threads, and where its result goes."""

    batch: Sequence[NDArray[np.float32]]
    future: asyncio.Future[list[Output | Exception]]
    loop: asyncio.AbstractEventLoop
    words: Sequence[bool] | None = None
    abandoned: bool = False


@dataclass(eq=False, slots=True)
class _Thread:
    """One worker thread, and whether it has been written off."""

    name: str
    thread: threading.Thread | None = None
    work: _Work | None = None
    written_off: bool = False
    replaced: bool = False
    since: float = 0.0


class ThreadPool:
    """Named daemon threads running the model; right for models that release the GIL.

    A thread cannot be stopped. When the scheduler gives up on a batch (its deadline
    passed) it cancels ``run``: the thread running it is written off (its result will be
    discarded when it returns) and, while fewer than ``max_replacements`` written-off
    threads are still running, a new thread takes its place at once. Past that bound the
    capacity is lost until a written-off thread returns: ``run`` then waits for it, so its
    caller keeps the worker's place taken, and ``available_workers`` says how many are left.
    The threads are daemons, so a model call that never returns cannot keep the process
    from exiting.
    """

    preemptible = False

    def __init__(
        self,
        model: Model,
        workers: int,
        *,
        max_replacements: int | None = None,
        name: str = "streamer-infer",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.model = model
        self.workers = workers
        self.max_replacements = workers if max_replacements is None else max_replacements
        self.written_off = 0
        """Threads written off so far (each was stuck past a deadline)."""
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[_Thread] = set()
        self._started = 0
        self._closed = False
        self._pending: set[_Work] = set()
        for _ in range(workers):
            self._spawn()

    # -- state -----------------------------------------------------------------------------

    @property
    def stuck_workers(self) -> int:
        """Written-off threads still inside the model."""
        with self._lock:
            return sum(1 for t in self._threads if t.written_off)

    @property
    def available_workers(self) -> int:
        """Threads that can take a batch (``workers`` less the capacity lost to stuck ones)."""
        with self._lock:
            return sum(1 for t in self._threads if not t.written_off)

    # -- running batches ---------------------------------------------------------------------

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("the thread pool is closed")
        work = _Work(batch, loop.create_future(), loop, words)
        self._pending.add(work)
        self._queue.put(work)
        try:
            return await asyncio.shield(work.future)
        except asyncio.CancelledError:
            if work.future.done():
                raise
            if not self._abandon(work):
                # No thread could take the stuck one's place: keep its place taken until it
                # returns (or the pool closes), so that no more batches are sent than run.
                with contextlib.suppress(Exception):
                    await asyncio.shield(work.future)
            raise
        finally:
            self._pending.discard(work)

    def _abandon(self, work: _Work) -> bool:
        """Write off the thread running ``work``; True when the pool's capacity is whole."""
        with self._lock:
            work.abandoned = True
            owner = next((t for t in self._threads if t.work is work), None)
            if owner is None:  # not taken yet: no thread will run it
                return True
            owner.written_off = True
            self.written_off += 1
            replacements = sum(1 for t in self._threads if t.written_off and t.replaced)
            if replacements >= self.max_replacements:
                log.error(
                    "inference thread %s is stuck past its deadline; written off, not replaced "
                    "(%d replacements already running): %d of %d workers left",
                    owner.name,
                    replacements,
                    sum(1 for t in self._threads if not t.written_off),
                    self.workers,
                )
                return False
            owner.replaced = True
        log.error(
            "inference thread %s is stuck past its deadline; written off and replaced "
            "(its result will be discarded)",
            owner.name,
        )
        self._spawn()
        return True

    def _spawn(self) -> None:
        with self._lock:
            self._started += 1
            worker = _Thread(f"{self._name}-{self._started}")
            worker.thread = threading.Thread(
                target=self._serve, args=(worker,), name=worker.name, daemon=True
            )
            self._threads.add(worker)
        worker.thread.start()

    def _serve(self, worker: _Thread) -> None:
        while (work := self._queue.get()) is not None:
            with self._lock:
                if work.abandoned:
                    continue
                worker.work = work
                worker.since = time.monotonic()
            results = call_model(self.model, work.batch, work.words)
            with self._lock:
                worker.work = None
                written_off, replaced = worker.written_off, worker.replaced
                if written_off:
                    worker.written_off = False
                    if replaced:
                        self._threads.discard(worker)
            if written_off:
                log.warning(
                    "written-off inference thread %s returned after %.1f s; result discarded%s",
                    worker.name,
                    time.monotonic() - worker.since,
                    "" if replaced else "; it serves again",
                )
                if replaced:
                    return
            _settle(work, results)
        with self._lock:
            self._threads.discard(worker)

    async def close(self) -> None:
        """Stop the threads once they are free; fail what is waiting or running now."""
        self._closed = True
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._queue.put(None)
        for work in list(self._pending):
            work.abandoned = True
            if not work.future.done():
                work.future.set_exception(
                    WorkerCrashed("the server stopped before this inference finished")
                )


def _settle(work: _Work, results: list[Output | Exception]) -> None:
    """Hand a batch's results to its loop (from a worker thread)."""

    def settle() -> None:
        if not work.future.done():
            work.future.set_result(results)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
        work.loop.call_soon_threadsafe(settle)
