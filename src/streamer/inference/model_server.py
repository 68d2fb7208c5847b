"""One model process for every front-end process (``inference.pool = "shared"``).

With ``--workers N`` each front-end process would otherwise load the model itself: on a
GPU, N copies and N CUDA contexts. Here the supervisor starts one model process
(``ModelServer``) listening on a Unix socket; each front-end process keeps its scheduler
and reaches the model through a ``SharedPool`` of ``inference.workers`` connections, one
batch in flight on each. The model process answers every connection from a thread of its
own, so batches of all front-ends run at once (CTranslate2 releases the GIL; Whisper has
``inference.workers`` replicas). A single process (``--workers 1``) starts its own.

The wire is the process pool's: a pickled ``(batch, words)`` in, a pickled list of
results out; the first message on a connection is the model's metadata. Faults:

- the model process dies: the batches it held fail with ``WorkerCrashed`` (a batch of
  several is retried one input at a time, so that an input that kills it fails alone;
  unlike the process pool's workers, one process holds every batch in flight, so a crash
  fails the others running at that moment too); it is started again (by the supervisor,
  or the single process that owns it), and the front-ends connect again;
- a batch past its deadline is given up by closing its connection (the model finishes
  it and finds no one to answer); a new connection takes its place;
- until the front-end holds a connection, its health counts no available worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import NDArray

from streamer.errors import WorkerCrashed
from streamer.inference.model import ModelElsewhere, Output, UnsupportedModel
from streamer.inference.pool import call_model
from streamer.inference.process_pool import ModelFactory, portable

__all__ = ["ModelServer", "ServedModel", "SharedPool"]

log = logging.getLogger(__name__)

_FIRST_RETRY: Final = 0.05
_LAST_RETRY: Final = 1.0


@dataclass(slots=True)
class ServedModel(ModelElsewhere):
    """The model's metadata, for a front-end whose model runs in the model process."""

    runs: ClassVar[str] = "in the model process"


# -- the model process -----------------------------------------------------------------------


def serve_model(address: str, authkey: bytes, factory: ModelFactory, owner: int) -> None:
    """The model process's main: build the model, then answer every connection; end
    when the ``owner`` process is gone."""
    # The supervisor decides when it ends; a terminal's Ctrl-C must not end it mid-drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(owner)
    model = factory()
    meta = {
        "name": model.name,
        "sample_rate": model.sample_rate,
        "max_batch_size": model.max_batch_size,
        "device": str(getattr(model, "device", None) or "unknown"),
        "pid": os.getpid(),  # which incarnation of the model process answers
    }
    # Bound once the model is built: a front-end that connects finds it ready.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)  # left by a model process that died
    with Listener(address, "AF_UNIX", authkey=authkey) as listener:
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError, multiprocessing.AuthenticationError):
                continue  # a client that went away mid-handshake, or a stranger
            threading.Thread(target=_answer, args=(conn, model, meta), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this process when its owner is gone (killed, say): the model (and a GPU's
    memory) must not outlive the server."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_LAST_RETRY)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _answer(conn: Connection, model: Any, meta: dict[str, Any]) -> None:
    """One connection: its batches, one at a time, until it closes."""
    with conn:
        try:
            conn.send_bytes(pickle.dumps(meta))
            while True:
                batch, words = pickle.loads(conn.recv_bytes())
                conn.send_bytes(portable(call_model(model, batch, words)))
        except (EOFError, OSError):  # the front-end closed it (or gave up on a batch)
            return


class ModelServer:
    """The model process, as its owner (the supervisor, or a single process) sees it."""

    def __init__(self, factory: ModelFactory, *, folder: str | None = None) -> None:
        self._folder = folder or tempfile.mkdtemp(prefix="streamer-model-")
        self.address = str(Path(self._folder) / "model.sock")
        self.authkey = secrets.token_bytes(32)
        self._factory = factory
        self._context = multiprocessing.get_context("spawn")
        self.process: BaseProcess | None = None
        self.started = 0

    def start(self) -> None:
        """Start the model process (again, when it has exited)."""
        if self.process is not None and self.process.is_alive():
            return
        self.started += 1
        self.process = self._context.Process(
            target=serve_model,
            args=(self.address, self.authkey, self._factory, os.getpid()),
            name="streamer-model",
            daemon=True,
        )
        self.process.start()

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.exitcode is not None

    @property
    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def stop(self, timeout: float = 5.0) -> None:
        """End the model process and remove its socket."""
        process = self.process
        if process is not None and process.exitcode is None:
            process.terminate()
            process.join(timeout)
            if process.exitcode is None:
                process.kill()
                process.join(timeout)
        with contextlib.suppress(OSError):
            os.unlink(self.address)
        with contextlib.suppress(OSError):
            os.rmdir(self._folder)


def connect(address: str, authkey: bytes, timeout: float) -> tuple[Connection, dict[str, Any]]:
    """A connection to the model process, and its metadata; retried until ``timeout``
    (the model may still be loading). Raises ``UnsupportedModel`` when it never answers."""
    loop_until = time.monotonic() + timeout
    pause = _FIRST_RETRY
    while True:
        try:
            conn = Client(address, "AF_UNIX", authkey=authkey)
            meta: dict[str, Any] = pickle.loads(conn.recv_bytes())
            return conn, meta
        except (OSError, EOFError, multiprocessing.AuthenticationError) as error:
            if time.monotonic() + pause > loop_until:
                raise UnsupportedModel(
                    f"the model process at {address} did not answer within {timeout:.0f} s "
                    f"({type(error).__name__}: {error})"
                ) from None
            threading.Event().wait(pause)
            pause = min(pause * 2, _LAST_RETRY)


# -- a front-end's side ------------------------------------------------------------------------


class _Exchange:
    """One batch's round trip on a connection, from a thread; the loop may abandon it (the
    connection is then closed by whichever side finishes last, so its descriptor is never
    reused under the other)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._finished = False
        self._abandoned = False

    def run(self, payload: bytes) -> bytes | None:
        """The reply, or None when the connection broke (the model process died)."""
        try:
            self.conn.send_bytes(payload)
            reply: bytes | None = self.conn.recv_bytes()
        except (EOFError, OSError):
            reply = None
        with self._lock:
            self._finished = True
            if self._abandoned:
                self.conn.close()
                return None
        return reply

    def abandon(self) -> None:
        """Give up on the reply: wake the thread (it closes the connection), or close it."""
        with self._lock:
            self._abandoned = True
            if self._finished:
                self.conn.close()
                return
            # A shut-down socket wakes the thread's receive with its end.
            with (
                contextlib.suppress(OSError),
                socket.socket(fileno=os.dup(self.conn.fileno())) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)


class SharedPool:
    """The worker pool seam over ``workers`` connections to the model process.

    Create it inside a running event loop (``open`` gives the first connection and the
    model's metadata; call it from start-up code). ``server``: a ``ModelServer`` this pool
    owns (a single process): started again when it dies, stopped on ``close``.
    """

    preemptible = False
    """Giving up on a batch frees its place here; the model process still finishes it."""

    def __init__(
        self,
        address: str,
        authkey: bytes,
        workers: int,
        *,
        first: tuple[Connection, int],
        server: ModelServer | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.address = address
        self.workers = workers
        self._authkey = authkey
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._idle: deque[Connection] = deque([first[0]])
        self._busy: set[Connection] = set()
        self._pids: dict[Connection, int] = {first[0]: first[1]}
        """The model process each connection reaches."""
        self._dead: set[int] = set()
        """Model processes seen to die: connections to them are dropped unused."""
        self._waiters: deque[asyncio.Future[Connection]] = deque()
        self._connecting: set[asyncio.Task[None]] = set()
        # A thread for each batch in flight, and for connecting.
        self._threads = concurrent.futures.ThreadPoolExecutor(
            workers + 1, thread_name_prefix="model-connection"
        )
        self._exchanges: set[_Exchange] = set()
        self._closed = False
        self.lost = 0
        """Batches lost to a model process that died (or a broken connection)."""
        for _ in range(workers - 1):
            self._reconnect()

    @classmethod
    def open(
        cls,
        address: str,
        authkey: bytes,
        workers: int,
        *,
        server: ModelServer | None = None,
        timeout: float = 120.0,
    ) -> tuple[SharedPool, ServedModel]:
        """The pool and the model's metadata, once the model process answers (blocking)."""
        conn, meta = connect(address, authkey, timeout)
        model = ServedModel(
            str(meta["name"]),
            int(meta["sample_rate"]),
            int(meta["max_batch_size"]),
            str(meta.get("device") or "unknown"),
        )
        first = (conn, int(meta.get("pid", 0)))
        return cls(address, authkey, workers, first=first, server=server), model

    @property
    def available_workers(self) -> int:
        """Connections held: none while the model process is down."""
        return len(self._idle) + len(self._busy)

    @property
    def stuck_workers(self) -> int:
        return 0

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        """One output or exception per input; ``WorkerCrashed`` for inputs the model process
        died on (a batch of several is retried one input at a time)."""
        if not batch:
            return []
        wanted = list(words) if words is not None else [False] * len(batch)
        try:
            return await self._run_once(list(batch), wanted)
        except WorkerCrashed as crash:
            if len(batch) == 1:
                return [crash]
        log.warning("the model process died on a batch of %d; retrying one by one", len(batch))
        # One after another: an input that kills the process then takes none of its
        # batch-mates with it (a batch of another stream in flight at that moment can be).
        return [
            await self._run_alone(audio, want) for audio, want in zip(batch, wanted, strict=True)
        ]

    async def _run_alone(self, audio: NDArray[np.float32], want: bool) -> Output | Exception:
        try:
            return (await self._run_once([audio], [want]))[0]
        except WorkerCrashed as crash:
            return crash

    async def _run_once(
        self, batch: list[NDArray[np.float32]], words: list[bool]
    ) -> list[Output | Exception]:
        conn = await self._acquire()
        payload = pickle.dumps((batch, words), protocol=pickle.HIGHEST_PROTOCOL)
        exchange = _Exchange(conn)
        self._exchanges.add(exchange)
        try:
            # On a thread of the pool's own, on a blocking socket: the event loop's
            # readers would make the socket non-blocking (uvloop does), and a message
            # that arrives in parts cannot be read that way.
            reply = await self._loop.run_in_executor(self._threads, exchange.run, payload)
        except asyncio.CancelledError:
            # Past its deadline: the model finishes the batch and finds the connection
            # closed; another connection takes this one's place.
            self._forget(conn)
            exchange.abandon()
            self._reconnect()
            raise
        finally:
            self._exchanges.discard(exchange)
        if reply is None:
            self.lost += 1
            self._dead.add(self._pids.get(conn, 0))
            self._drop(conn)
            raise WorkerCrashed("the model process died during inference")
        self._release(conn)
        results: list[Output | Exception] = pickle.loads(reply)
        if len(results) != len(batch):
            error = WorkerCrashed(f"the model gave {len(results)} results for {len(batch)}")
            return [error] * len(batch)
        return results

    async def _acquire(self) -> Connection:
        if self._closed:
            raise WorkerCrashed("the worker pool is closed")
        while self._idle:
            conn = self._idle.popleft()
            # The model process never speaks first: an idle connection with something to
            # read has reached its end (the process died), as has one to a process that
            # died on another connection (its end may not have arrived yet).
            if self._pids.get(conn) in self._dead or conn.poll(0):
                self._drop(conn)
                continue
            break
        else:
            waiter: asyncio.Future[Connection] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(waiter.result())  # handed over as the caller gave up
                raise
        self._busy.add(conn)
        return conn

    def _release(self, conn: Connection) -> None:
        self._busy.discard(conn)
        if self._closed:
            conn.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _forget(self, conn: Connection) -> None:
        self._busy.discard(conn)
        self._pids.pop(conn, None)

    def _drop(self, conn: Connection) -> None:
        """Close a connection that is no use (broken, or to a dead process); make another."""
        self._forget(conn)
        conn.close()
        self._reconnect()

    def _reconnect(self) -> None:
        if self._closed:
            return
        task = self._loop.create_task(self._connect(), name="model-connect")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self) -> None:
        pause = _FIRST_RETRY
        while not self._closed:
            if self._server is not None and self._server.exited:
                log.error("the model process exited; starting it again")
                self._server.start()
            try:
                conn, meta = await self._loop.run_in_executor(
                    self._threads, connect, self.address, self._authkey, pause
                )
            except UnsupportedModel:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _LAST_RETRY)
                continue
            if self._closed:
                conn.close()
                return
            pid = int(meta.get("pid", 0))
            self._dead.discard(pid)  # it answered: it is alive
            self._pids[conn] = pid
            self._release(conn)
            return

    async def close(self) -> None:
        """Fail whoever waits for a connection, close them all, stop an owned server."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._connecting):
            task.cancel()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(WorkerCrashed("the worker pool is closed"))
        while self._idle:
            self._idle.popleft().close()
        self._pids.clear()
        # Batches still running are given up (the scheduler has waited for them): their
        # threads wake and close their connections.
        for exchange in list(self._exchanges):
            exchange.abandon()
        self._busy.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
