"""A pool of worker processes, one pipe each: for GIL-bound or crash-prone models.

Each worker builds its own model from a picklable factory and runs one batch at a time,
taken from and answered on its own duplex pipe. The event loop watches the pipes and the
processes' sentinels itself (no thread per worker): a request is written, and the answer is
read when the pipe turns readable.

A worker that dies mid-inference fails only what it held, with ``WorkerCrashed``: when that
was a batch of several inputs, they are retried one at a time, so only the input that
kills a worker fails. A replacement starts at once (with a growing pause if new workers
keep dying before they are ready). Cancelling a run (as the scheduler does past its
deadline) kills the worker running it; a hung model cannot hold a worker for ever.

Not ``concurrent.futures.ProcessPoolExecutor``: its hand-off costs about 0.5 ms a round
trip against 0.1 ms on a pipe, and one dead worker breaks the whole executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from streamer.errors import WorkerCrashed
from streamer.inference.model import Model, ModelFailure, Output
from streamer.inference.pool import call_model

__all__ = ["ModelFactory", "ProcessPool", "RemoteModelError", "StartMethod", "portable"]

log = logging.getLogger(__name__)

ModelFactory = Callable[[], Model]
"""Builds the model inside a worker; must be picklable (a module-level function, a
``functools.partial`` of a class and its parameters)."""

StartMethod = Literal["forkserver", "spawn"]

_THREADED_SEND_BYTES: Final = 256 * 1024
"""Requests larger than this are written from a thread, so the loop never waits on a pipe."""
_MAX_RESTART_PAUSE: Final = 5.0


class RemoteModelError(RuntimeError):
    """A model raised something other than ``ModelFailure`` inside a worker process.

    Carries the type and message only: the original may not survive pickling.
    """


# -- the worker process ----------------------------------------------------------------------


def portable(results: list[Output | Exception]) -> bytes:
    """Pickle a batch's results; exceptions become ones that are sure to unpickle."""
    clean: list[Output | Exception] = []
    for result in results:
        if isinstance(result, ModelFailure):
            clean.append(ModelFailure(str(result)))
        elif isinstance(result, Exception):
            clean.append(RemoteModelError(f"{type(result).__name__}: {result}"))
        else:
            clean.append(result)
    try:
        return pickle.dumps(clean, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an output that does not pickle is the model's fault
        error = RemoteModelError(f"the model's output cannot be pickled: {exc!r}")
        return pickle.dumps([error] * len(results), protocol=pickle.HIGHEST_PROTOCOL)


def _serve(conn: Connection, factory: ModelFactory) -> None:
    """A worker's main: build the model, then answer batches until told to stop."""
    # The parent decides when workers end; a terminal's Ctrl-C must not kill them mid-drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model = factory()
    except BaseException as exc:
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    conn.send_bytes(pickle.dumps(("ready", model.name)))
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the parent went away
            return
        if request is None:
            return
        batch, words = request
        conn.send_bytes(portable(call_model(model, batch, words)))


# -- the parent's side -----------------------------------------------------------------------


class _Worker:
    """One worker process as the parent sees it."""

    __slots__ = ("conn", "dead", "name", "process", "ready", "reply")

    def __init__(self, name: str, process: BaseProcess, conn: Connection) -> None:
        self.name = name
        self.process = process
        self.conn = conn
        self.ready = False
        self.dead = False
        self.reply: asyncio.Future[list[Output | Exception]] | None = None


class ProcessPool:
    """``workers`` processes, each running the model ``factory`` builds, one batch at a time.

    Create it inside a running event loop: it watches its pipes from that loop. Workers
    start at once and take requests when their model is built (``wait_ready``).
    """

    preemptible = True

    def __init__(
        self,
        factory: ModelFactory,
        workers: int,
        *,
        start_method: StartMethod = "forkserver",
        name: str = "streamer-infer",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.name = name
        self.started = 0
        """Worker processes started, replacements included."""
        self.lost = 0
        """Worker processes that died without being told to stop."""
        self._factory = factory
        self._ctx: ForkServerContext | SpawnContext
        if start_method == "forkserver":
            self._ctx = multiprocessing.get_context("forkserver")
            # Workers fork from a server that has already imported this module (numpy,
            # the model code), so a replacement is up in milliseconds.
            self._ctx.set_forkserver_preload([__name__])
        else:
            self._ctx = multiprocessing.get_context("spawn")
        self._loop = asyncio.get_running_loop()
        self._live: set[_Worker] = set()
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._failed_starts = 0
        self._closed = False
        self._all_exited = asyncio.Event()
        for _ in range(workers):
            self._spawn()

    # -- state -----------------------------------------------------------------------------

    @property
    def ready_workers(self) -> int:
        """Workers whose model is built and that have not died."""
        return sum(1 for w in self._live if w.ready)

    @property
    def available_workers(self) -> int:
        """Live workers (a lost one is replaced at once, so this is ``workers`` but briefly)."""
        return len(self._live)

    @property
    def stuck_workers(self) -> int:
        """Always 0: a worker past its deadline is killed, not left running."""
        return 0

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.process.pid for w in self._live if w.process.pid is not None]

    async def wait_ready(self) -> None:
        """Wait until every worker has built its model."""
        while self.ready_workers < self.workers:
            waiter = self._loop.create_future()
            self._ready_waiters.append(waiter)
            await waiter

    # -- running batches ---------------------------------------------------------------------

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        """One output or exception per input; ``WorkerCrashed`` for inputs a worker died on."""
        if not batch:
            return []
        wanted = list(words) if words is not None else [False] * len(batch)
        try:
            return await self._run_on_worker(list(batch), wanted)
        except WorkerCrashed as crash:
            if len(batch) == 1:
                return [crash]
        # One of these inputs may kill any worker; find it by running them one by one.
        log.warning("a worker died on a batch of %d; retrying its inputs one by one", len(batch))
        return list(
            await asyncio.gather(
                *(self._run_alone(audio, want) for audio, want in zip(batch, wanted, strict=True))
            )
        )

    async def _run_alone(self, audio: NDArray[np.float32], words: bool) -> Output | Exception:
        try:
            return (await self._run_on_worker([audio], [words]))[0]
        except WorkerCrashed as crash:
            return crash

    async def _run_on_worker(
        self, batch: list[NDArray[np.float32]], words: list[bool]
    ) -> list[Output | Exception]:
        worker = await self._acquire()
        reply: asyncio.Future[list[Output | Exception]] = self._loop.create_future()
        worker.reply = reply
        try:
            payload = pickle.dumps((batch, words), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                if len(payload) > _THREADED_SEND_BYTES:
                    await asyncio.to_thread(worker.conn.send_bytes, payload)
                else:
                    worker.conn.send_bytes(payload)
            except OSError:
                self._lost(worker, "its pipe broke")
            results = await reply
        except asyncio.CancelledError:
            if not worker.dead:  # past the deadline: the model may never return
                self._lost(worker, "it was stopped mid-inference", expected=True)
            raise
        finally:
            worker.reply = None
        self._release(worker)
        if len(results) != len(batch):
            error = RemoteModelError(f"the model gave {len(results)} results for {len(batch)}")
            return [error] * len(batch)
        return results

    async def _acquire(self) -> _Worker:
        while self._idle:
            worker = self._idle.popleft()
            if not worker.dead:
                return worker
        if self._closed:
            raise WorkerCrashed("the worker pool is closed")
        waiter: asyncio.Future[_Worker] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over just as the caller gave up
            raise

    def _release(self, worker: _Worker) -> None:
        if worker.dead:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    # -- worker lifecycle ----------------------------------------------------------------------

    def _spawn(self) -> None:
        if self._closed:
            return
        self.started += 1
        name = f"{self.name}-{self.started}"
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_serve, args=(child, self._factory), name=name)
        process.daemon = True
        try:
            process.start()
        except Exception:
            log.exception("cannot start worker process %s", name)
            parent.close()
            self._failed_starts += 1
            self._restart_later()
            return
        finally:
            child.close()  # the worker holds its end; EOF on ours then means it died
        worker = _Worker(name, process, parent)
        self._live.add(worker)
        self._loop.add_reader(parent.fileno(), self._readable, worker)
        # uvloop makes a watched descriptor non-blocking; the pipe's messages are read and
        # written whole (a large request from a thread), which needs it blocking.
        os.set_blocking(parent.fileno(), True)
        self._loop.add_reader(process.sentinel, self._exited, worker)

    def _readable(self, worker: _Worker) -> None:
        try:
            message = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._lost(worker, "it exited")
            return
        except Exception:
            log.exception("unreadable message from worker %s", worker.name)
            self._lost(worker, "it sent an unreadable message")
            return
        if worker.ready:
            if worker.reply is not None and not worker.reply.done():
                worker.reply.set_result(message)
            return
        status, detail = message
        if status != "ready":
            log.error("worker %s could not build the model: %s", worker.name, detail)
            self._lost(worker, "its model failed to load")
            return
        worker.ready = True
        self._failed_starts = 0
        log.debug("worker %s ready (pid %s)", worker.name, worker.process.pid)
        self._release(worker)
        if self.ready_workers >= self.workers:
            for waiter in self._ready_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._ready_waiters.clear()

    def _exited(self, worker: _Worker) -> None:
        self._lost(worker, f"it exited with status {worker.process.exitcode}")

    def _lost(self, worker: _Worker, why: str, *, expected: bool = False) -> None:
        """Forget a worker that died (or must die), fail what it held, start another."""
        if worker.dead:
            return
        worker.dead = True
        self._live.discard(worker)
        self._forget(worker)
        if worker.reply is not None and not worker.reply.done():
            worker.reply.set_exception(
                WorkerCrashed(
                    "the worker pool is closed"
                    if self._closed
                    else "the worker process died during inference; it is being replaced"
                )
            )
        if self._closed:
            if not self._live:
                self._all_exited.set()
            return
        if not expected:
            self.lost += 1
            log.error("worker process %s (pid %s) lost: %s", worker.name, worker.process.pid, why)
        if not worker.ready:
            self._failed_starts += 1
        if self._failed_starts:
            self._restart_later()
        else:
            self._spawn()

    def _forget(self, worker: _Worker) -> None:
        """Stop watching a worker, kill it if it still runs, and reap it."""
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(worker.conn.fileno())
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(worker.process.sentinel)
        worker.conn.close()
        if worker.process.exitcode is None:
            worker.process.kill()
        _reap(worker.process, self._loop)

    def _restart_later(self) -> None:
        pause = min(0.1 * 2 ** max(self._failed_starts - 1, 0), _MAX_RESTART_PAUSE)
        self._loop.call_later(pause, self._spawn)

    # -- shutting down -------------------------------------------------------------------------

    async def close(self, grace: float = 2.0) -> None:
        """Ask idle workers to stop, give busy ones ``grace`` seconds, then kill the rest."""
        if self._closed:
            return
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(WorkerCrashed("the worker pool is closed"))
        for worker in list(self._live):
            if worker.reply is None:
                with contextlib.suppress(OSError):
                    worker.conn.send_bytes(pickle.dumps(None))
        if self._live:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_exited.wait()
        for worker in list(self._live):
            self._lost(worker, "the pool closed", expected=True)
        self._idle.clear()


def _reap(process: BaseProcess, loop: asyncio.AbstractEventLoop, tries: int = 50) -> None:
    """Collect an exiting process's status without blocking the loop (no zombies)."""
    process.join(0)
    if process.exitcode is None and tries > 0:
        loop.call_later(0.05, _reap, process, loop, tries - 1)
