"""One end-of-turn model shared by every stream, run on a dedicated thread.

When a channel's VAD sees a pause long enough to matter, its route hands the engine the
channel's last 8 seconds of audio; the engine computes the features and runs the model on
its own thread, and the probability comes back as a resolved future. The loop never runs
the model.

On a small CPU batching saves nothing (one window costs about as much alone as in a
batch, and a batch only adds waiting), so the engine spends the model where an answer
still matters: the newest pause first; one request per stream, a newer one replacing the
older; a request withdrawn when speech resumes; and a request that waited past
``max_wait`` dropped rather than answered too late to use. Batching is there for a
machine where it pays (``max_batch``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from streamer.errors import ShuttingDown
from streamer.turn.features import last_window, turn_features

__all__ = [
    "TurnAnswer",
    "TurnEngine",
    "TurnModel",
    "TurnReply",
    "TurnStream",
]

log = logging.getLogger(__name__)

Float32Array = NDArray[np.float32]

COST_SMOOTHING: Final = 0.1
"""Weight of the newest call in ``cost_per_window`` (an exponential moving average)."""


class TurnModel(Protocol):
    """What the engine runs: log-mel windows ``(B, 80, 800)`` in, probabilities ``(B,)`` out."""

    threads: int

    def run(self, features: Float32Array) -> Float32Array: ...


@dataclass(frozen=True, slots=True)
class TurnAnswer:
    """The model's answer to one request."""

    probability: float
    """That the speaker has finished their turn, in [0, 1]."""
    waited: float
    """Seconds from the request to the start of the call that answered it."""
    batch: int
    """Rows in that call."""


class TurnStream:
    """One channel's handle on the engine: at most one request of it waits at a time."""

    __slots__ = ("__weakref__", "_engine")

    def __init__(self, engine: TurnEngine) -> None:
        self._engine = engine


class _Request:
    __slots__ = ("audio", "future", "stream", "submitted")

    def __init__(self, stream: TurnStream, audio: Float32Array, submitted: float) -> None:
        self.stream = stream
        self.audio = audio
        self.submitted = submitted
        self.future: concurrent.futures.Future[TurnAnswer | None] = concurrent.futures.Future()


class TurnReply:
    """The answer to ``TurnEngine.submit``: a ``TurnAnswer``, or None if it was dropped
    (replaced by a newer request of the stream, withdrawn, or too late)."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[TurnAnswer | None]) -> None:
        self._future = future

    async def get(self) -> TurnAnswer | None:
        """Wait on the event loop."""
        return await asyncio.wrap_future(self._future)

    def result(self, timeout: float | None = None) -> TurnAnswer | None:
        """Block the calling thread (tests, offline tools); never on the event loop."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether the answer (or the drop) is in."""
        return self._future.done()


class TurnEngine:
    """The end-of-turn model on one named thread, newest pause first.

    ``submit`` hands in a stream's latest audio; ``withdraw`` drops its waiting request
    when speech resumes. Each call takes up to ``max_batch`` waiting requests, newest
    first. Counters: ``calls_run``, ``windows_run``, ``superseded``, ``withdrawn``,
    ``expired``; ``cost_per_window`` is the CPU seconds one window costs (features and
    model), for admission to count; ``on_call(rows, seconds)`` is called on the engine's
    thread after every call.
    """

    def __init__(
        self,
        model: TurnModel | None = None,
        *,
        threads: int = 1,
        max_batch: int = 1,
        max_wait: float = 2.0,
        thread_name: str = "streamer-turn",
        on_call: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait <= 0:
            raise ValueError("max_wait must be positive")
        self.threads = model.threads if model is not None else threads
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.thread_name = thread_name
        self.on_call = on_call
        self.clock = clock
        """Seconds, for ``max_wait`` and ``TurnAnswer.waited`` (a fake one in tests)."""
        self.calls_run = 0
        self.windows_run = 0
        self.superseded = 0
        self.withdrawn = 0
        self.expired = 0
        self.cpu_seconds = 0.0
        """CPU seconds spent in calls (features and model), all calls together."""
        self.cost_per_window = 0.0
        """Recent CPU seconds per scored window (0 until the first call)."""
        self._model = model
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: dict[TurnStream, _Request] = {}  # insertion order is submission order
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine's thread, which first loads the bundled model (unless one was
        given): a caller on the event loop does not wait for the load, and requests made
        meanwhile wait for it."""
        with self._lock:
            if self._closed:
                raise ShuttingDown("the turn engine is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
            self._thread.start()

    def _load(self) -> None:
        if self._model is None:
            from streamer.turn.model import SmartTurn

            self._model = SmartTurn(threads=self.threads)

    def close(self, timeout: float | None = None) -> None:
        """Stop after the call in progress; waiting requests fail with ``ShuttingDown``."""
        with self._lock:
            already = self._closed
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if not already and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._fail_waiting(ShuttingDown("the turn engine is closed"))

    @property
    def running(self) -> bool:
        """Whether the engine's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> TurnEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------

    def open_stream(self) -> TurnStream:
        """A handle for one channel."""
        return TurnStream(self)

    def submit(self, stream: TurnStream, audio: NDArray[np.floating]) -> TurnReply:
        """Score a channel's audio up to now (16 kHz; only the last 8 s are kept).

        A request of the same stream still waiting is dropped (its reply gets None): the
        newer audio holds all it had, and more of the pause.
        """
        if stream._engine is not self:
            raise ValueError("the stream was opened by another engine")
        request = _Request(stream, last_window(audio), self.clock())  # the engine's own copy
        with self._lock:
            if self._closed:
                raise ShuttingDown("the turn engine is closed")
            if self._thread is None:
                raise RuntimeError("the turn engine is not started")
            older = self._waiting.pop(stream, None)
            if older is not None:
                self.superseded += 1
                older.future.set_result(None)
            self._waiting[stream] = request
            self._wake.notify()
        return TurnReply(request.future)

    def withdraw(self, stream: TurnStream) -> bool:
        """Drop the stream's waiting request (speech resumed); whether there was one.

        A request already being run is answered anyway; the caller ignores it.
        """
        with self._lock:
            request = self._waiting.pop(stream, None)
            if request is None:
                return False
            self.withdrawn += 1
        request.future.set_result(None)
        return True

    def waiting(self) -> int:
        """Requests not yet taken by a call."""
        with self._lock:
            return len(self._waiting)

    # -- the engine's thread -------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        """The next call's requests, newest first; None when closed."""
        with self._lock:
            while not self._waiting and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            now = self.clock()
            taken: list[_Request] = []
            late: list[_Request] = []
            for stream in reversed(list(self._waiting)):
                request = self._waiting[stream]
                if now - request.submitted > self.max_wait:
                    late.append(request)
                elif len(taken) < self.max_batch:
                    taken.append(request)
                else:
                    continue
                del self._waiting[stream]
            self.expired += len(late)
        for request in late:
            request.future.set_result(None)
        return taken

    def _serve(self) -> None:
        failure: BaseException = ShuttingDown("the turn engine is closed")
        try:
            self._load()
            while True:
                taken = self._take()
                if taken is None:
                    return
                if taken:
                    self._call(taken)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("turn engine thread failed")
            failure = ShuttingDown(f"the turn engine failed: {exc!r}")
            with self._lock:
                self._closed = True
        finally:
            self._fail_waiting(failure)

    def _call(self, requests: list[_Request]) -> None:
        model = self._model
        assert model is not None
        began = time.perf_counter()
        waited_until = self.clock()
        cpu_began = time.thread_time()
        try:
            features = np.stack([turn_features(r.audio) for r in requests])
            probabilities = model.run(features)
        except Exception as exc:
            # This call's requests fail; the engine and other streams go on.
            log.exception("end-of-turn model call failed for %d rows", len(requests))
            for request in requests:
                request.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - began
        # The calling thread's CPU, plus the model's other intra-op threads, which are
        # busy while the call lasts.
        cpu = time.thread_time() - cpu_began + (self.threads - 1) * elapsed
        rows = len(requests)
        self.calls_run += 1
        self.windows_run += rows
        self.cpu_seconds += cpu
        per_window = cpu / rows
        if self.calls_run == 1:
            self.cost_per_window = per_window
        else:
            self.cost_per_window += COST_SMOOTHING * (per_window - self.cost_per_window)
        if self.on_call is not None:  # before the answers: a caller sees the call counted
            try:
                self.on_call(rows, elapsed)
            except Exception:
                log.exception("turn engine on_call callback failed")
        for request, probability in zip(requests, probabilities, strict=True):
            request.future.set_result(
                TurnAnswer(float(probability), waited=waited_until - request.submitted, batch=rows)
            )

    def _fail_waiting(self, error: BaseException) -> None:
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(error)
