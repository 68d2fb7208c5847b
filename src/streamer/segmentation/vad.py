"""Silero voice activity detection, batched across streams on one dedicated thread.

``VadEngine`` shares one model (``silero_model.SileroVad``, the bare bundled model) between
every stream of the process: the event loop hands it frames, its own thread
runs steps of batched calls over the frames every stream has waiting (several frames of
a stream with a backlog, one call per frame index), and the results come back to the loop
as resolved futures. The loop never runs the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final

import numpy as np

from streamer.errors import ShuttingDown
from streamer.segmentation.silero_model import (
    CONTEXT_SAMPLES,
    FRAME_SAMPLES,
    FRAMES_PER_SECOND,
    STATE_SHAPE,
    VAD_SAMPLE_RATE,
    Float32Array,
    SileroVad,
)

__all__ = [
    # The bundled model's frame geometry and the model itself, as the engine's callers
    # use them (silero_model.py has them).
    "CONTEXT_SAMPLES",
    "DEFAULT_MAX_BATCH",
    "FRAMES_PER_SECOND",
    "FRAME_SAMPLES",
    "STATE_SHAPE",
    "VAD_SAMPLE_RATE",
    "SileroVad",
    "VadEngine",
    "VadReply",
    "VadStream",
]

log = logging.getLogger(__name__)

ACTIVE_WINDOW: Final = 0.5
"""Seconds after its last frames during which a stream is waited for (``min_interval``)."""
DEFAULT_MAX_BATCH: Final = 256
"""Streams one step runs at most, by default (rows of one model call)."""
EAGER_WINDOW: Final = 0.005
"""Frames a stream hands in within this many seconds of getting its last probabilities
back come from a sender that waits on the engine (faster than real time): the step interval
does not hold them back."""


Result = Float32Array | BaseException
Then = Callable[[Result], None]
"""What ``submit_then`` calls on the event loop with a request's probabilities, or the
exception that failed it."""
Waiter = asyncio.Future[Float32Array] | concurrent.futures.Future[Float32Array] | Then


class _Request:
    """Frames of one stream waiting for the engine, or a reset of its state."""

    __slots__ = ("began", "done", "frames", "loop", "out", "stream", "waiter")

    def __init__(
        self,
        stream: VadStream,
        frames: Float32Array | None,
        waiter: Waiter | None,
        loop: asyncio.AbstractEventLoop | None = None,
        began: float = 0.0,
    ) -> None:
        self.stream = stream
        self.frames = frames  # None: reset the stream's state when this reaches the head
        self.waiter = waiter
        self.loop = loop  # where an asyncio waiter or a callback must be resolved
        self.began = began  # when a callback's frames were handed in (perf_counter)
        self.done = 0
        self.out = np.empty(0 if frames is None else len(frames), dtype=np.float32)


_Planned = tuple[_Request, int, Float32Array]
"""One frame a step will run: its request, its index there, and the frame."""


def _resolve(replies: list[tuple[_Request, Result]]) -> None:
    """On the event loop: hand every result of a step to its waiter, a future or a
    callback (which is told the wait too, as a ``VadReply``'s ``get`` is)."""
    now = 0.0
    for request, result in replies:
        waiter = request.waiter
        if isinstance(waiter, asyncio.Future):
            if waiter.done():  # the caller gave up waiting
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)
            continue
        if waiter is None or isinstance(waiter, concurrent.futures.Future):
            continue  # resolved on the engine's thread (``_Replies.add``)
        if not now:
            now = time.perf_counter()
        request.stream._answer(now, request.began)
        try:
            waiter(result)
        except Exception:  # the caller's own fault: its stream, not the others', suffers
            log.exception("a VAD reply's callback failed")


class _Replies:
    """Results collected on the engine's thread, sent once per event loop per step.

    One ``call_soon_threadsafe`` a step instead of one a request: each wakes the loop
    through its self-pipe, which under load cost more than the model's own share.
    """

    __slots__ = ("_by_loop",)

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Result]]] = {}

    def add(self, request: _Request, result: Result) -> None:
        waiter = request.waiter
        if isinstance(waiter, concurrent.futures.Future):
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)
        elif waiter is not None and request.loop is not None:
            self._by_loop.setdefault(request.loop, []).append((request, result))

    def send(self) -> None:
        for loop, replies in self._by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, replies)
            except RuntimeError:  # the loop is closed; nobody is waiting any more
                pass
        self._by_loop = {}


class VadStream:
    """One channel's recurrent VAD state, kept by the engine that opened it.

    The state row and context belong to the engine's thread; callers only hand the stream
    back to ``VadEngine.probabilities`` and ``reset``.
    """

    __slots__ = (
        "__weakref__",
        "_answered",
        "_engine",
        "_pending",
        "_scheduled",
        "context",
        "state",
    )

    def __init__(self, engine: VadEngine) -> None:
        self._engine = engine
        self.state: Float32Array = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context: Float32Array = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        # Engine-thread only: requests in submission order, and whether the stream is in
        # the engine's ready queue or in the batch being run.
        self._pending: deque[_Request] = deque()
        self._scheduled = False
        # Loop only: when its caller last got probabilities back (perf_counter seconds).
        self._answered = -1.0

    def reset(self) -> None:
        """Forget the audio seen so far, after the frames already submitted are run.

        Ordered with ``probabilities`` calls: earlier requests use the old state, later
        ones start from zeros.
        """
        self._engine._submit(_Request(self, None, None))

    def _answer(self, now: float, began: float) -> None:
        """Its caller got probabilities back at ``now`` for frames handed in at ``began``
        (on the loop): noted for the eager window, the wait told to ``on_delay``."""
        self._answered = now
        on_delay = self._engine.on_delay
        if on_delay is not None:
            on_delay(now - began)

    def _zero(self) -> None:
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)


class VadReply:
    """The probabilities of frames handed in by ``VadEngine.submit``, once ``get`` has them."""

    __slots__ = ("_began", "_engine", "_future", "_stream")

    def __init__(
        self,
        engine: VadEngine,
        stream: VadStream,
        future: asyncio.Future[Float32Array] | None,
    ) -> None:
        self._engine = engine
        self._stream = stream
        self._future = future  # None: there were no frames
        self._began = time.perf_counter()

    async def get(self) -> Float32Array:
        """Wait for the probabilities; the wait is reported to the engine's ``on_delay``."""
        if self._future is None:
            return np.empty(0, dtype=np.float32)
        result = await self._future
        self._stream._answer(time.perf_counter(), self._began)
        return result


_STOP: Final = object()


class VadEngine:
    """One Silero model shared by every stream, run on a dedicated named thread.

    Requests from many streams are gathered into steps: each step takes up to
    ``max_frames`` waiting frames of each of up to ``max_batch`` streams, and runs them in
    as many calls as the longest stream has frames: call ``k`` batches the ``k``-th frame of
    every stream that has one (a stream's frames stay in order, since its state is
    recurrent). So a stream with a backlog is not held to one frame a step, and a fast
    sender runs far faster than real time. Streams left over by a full step go first in the
    next one. Batches form on their own under load: whatever arrives while a call runs
    joins the next step. With ``min_interval`` (seconds), a step also starts no sooner than
    that after the previous one began, unless a full batch is ready or no other stream is
    expected: many small steps cost far more than a few large ones (a call's fixed cost is
    about two rows'), at the price of up to that much delay per frame. Another stream is
    expected when one that sent frames in the last ``ACTIVE_WINDOW`` seconds has none
    waiting; a stream alone on the engine never waits, and neither does one that hands in
    frames as soon as it is answered (within ``EAGER_WINDOW``): it cuts the wait short,
    since it is waiting on the engine rather than on its audio.

    ``steps_run``, ``batches_run`` (model calls) and ``frames_run`` count work done;
    ``on_batch(rows, seconds)`` is called on the engine's thread after every model call.
    """

    def __init__(
        self,
        model: SileroVad | None = None,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_frames: int = 32,
        thread_name: str = "streamer-vad",
        on_batch: Callable[[int, float], None] | None = None,
        min_interval: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self.max_batch = max_batch
        self.max_frames = max_frames
        self.min_interval = min_interval
        self.thread_name = thread_name
        self.on_batch = on_batch
        self.on_delay: Callable[[float], None] | None = None
        """Called on the loop with each wait for probabilities (the VAD step delay)."""
        self.steps_run = 0
        self.batches_run = 0
        self.frames_run = 0
        self._model = model
        # Requests, or lists of requests handed in together (``submit_all``), or _STOP.
        self._inbox: queue.SimpleQueue[_Request | list[_Request] | object] = queue.SimpleQueue()
        # Guards the closed flag so that no request can be queued behind the stop marker.
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready: deque[VadStream] = deque()
        self._hurry = threading.Event()  # set when an eager stream's frames arrive
        self._running: list[_Request] = []  # the step in progress, for _fail_all
        # Engine-thread only: when each stream last sent frames, oldest first.
        self._seen: OrderedDict[VadStream, float] = OrderedDict()
        self._cpu_clock: int | None = None  # the engine thread's CPU clock, once started
        self._cpu_seen = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Load the model (unless one was given) and start the engine's thread."""
        with self._lock:
            if self._closed:
                raise ShuttingDown("the VAD engine is closed")
            if self._thread is not None:
                return
            self._loaded()
            self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
            self._thread.start()
            if hasattr(time, "pthread_getcpuclockid") and self._thread.ident is not None:
                self._cpu_clock = time.pthread_getcpuclockid(self._thread.ident)

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread after the step in progress; fail every waiting request.

        Waiting callers get ``ShuttingDown``; later calls raise it at once.
        """
        with self._lock:
            if self._closed:
                thread = None
            else:
                self._closed = True
                self._inbox.put(_STOP)
                thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        elif self._thread is None:
            self._fail_all(ShuttingDown("the VAD engine is closed"))

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the engine's thread has used so far, the model's included (it runs
        on this thread); its last reading once the thread is gone, 0 where the platform
        has no per-thread clock."""
        thread = self._thread
        if self._cpu_clock is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(OSError):  # it ended just now: its last reading stands
                self._cpu_seen = time.clock_gettime(self._cpu_clock)
        return self._cpu_seen

    def cost_per_frame(self) -> float:
        """The model's CPU seconds per frame at ``max_batch`` rows, measured now on the
        calling thread (``SileroVad.cost_per_frame``); call it before the engine is busy."""
        with self._lock:
            model = self._loaded()
        return model.cost_per_frame(self.max_batch)

    def _loaded(self) -> SileroVad:
        """The model, loaded now unless it was given or already loaded (under the lock)."""
        if self._model is None:
            self._model = SileroVad()
        return self._model

    @property
    def running(self) -> bool:
        """Whether the engine's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> VadEngine:
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

    def open_stream(self) -> VadStream:
        """A fresh stream with zero state."""
        return VadStream(self)

    async def probabilities(self, stream: VadStream, frames: Float32Array) -> Float32Array:
        """Speech probabilities ``(k,)`` for ``k`` consecutive frames ``(k, 512)`` of a stream.

        Called on the event loop; the model runs on the engine's thread. Calls for one
        stream are run in the order they were made. Cancelling the wait does not withdraw
        the frames: they still advance the stream's state, so it stays in step with the
        audio that was submitted.
        """
        return await self.submit(stream, frames).get()

    def submit(self, stream: VadStream, frames: Float32Array) -> VadReply:
        """``probabilities`` in two halves: the frames are handed in now, and the reply's
        ``get`` waits for their probabilities. The engine reads the frames themselves
        later, not a copy: the caller must not change them once handed in."""
        return self.submit_all([(stream, frames)])[0]

    def submit_all(self, requests: Sequence[tuple[VadStream, Float32Array]]) -> list[VadReply]:
        """``submit`` for several streams (a stream's channels) at once: the engine takes
        their frames together, so one step runs them all, and it does not wait for one of
        them while it holds the others."""
        loop = asyncio.get_running_loop()
        replies: list[VadReply] = []
        handed: list[_Request] = []
        now = time.perf_counter()
        for stream, frames in requests:
            batch = self._check(stream, frames)
            if not len(batch):
                replies.append(VadReply(self, stream, None))
                continue
            future: asyncio.Future[Float32Array] = loop.create_future()
            replies.append(VadReply(self, stream, future))
            handed.append(_Request(stream, batch, future, loop))
        self._hand_in(handed, now)
        return replies

    def submit_then(self, requests: Sequence[tuple[VadStream, Float32Array, Then]]) -> None:
        """``submit_all`` without a reply to await: each request's ``then`` is called on
        the event loop with its probabilities (or the exception that failed it), in the
        order of the stream's requests, as soon as the step that ran them is over. No
        future and no task wakes for it: the loop runs the callbacks of a whole step
        together. A callback that raises is logged; it must see to its own stream."""
        loop = asyncio.get_running_loop()
        handed: list[_Request] = []
        now = time.perf_counter()
        for stream, frames, then in requests:
            batch = self._check(stream, frames)
            if not len(batch):
                raise ValueError("submit_then needs frames in every request")
            handed.append(_Request(stream, batch, then, loop, now))
        self._hand_in(handed, now)

    def _hand_in(self, handed: list[_Request], now: float) -> None:
        """Queue requests made on the loop together; a stream among them that was answered
        within ``EAGER_WINDOW`` (it waits on the engine) cuts the step's wait short."""
        if not handed:
            return
        self._submit(handed[0] if len(handed) == 1 else handed)
        if self.min_interval and any(now - r.stream._answered < EAGER_WINDOW for r in handed):
            self._hurry.set()

    def probabilities_sync(
        self, stream: VadStream, frames: Float32Array, timeout: float | None = None
    ) -> Float32Array:
        """Like ``probabilities``, blocking the calling thread (tests, offline tools).

        The frames take the same path through the engine's thread, batched with everyone
        else's, so results are identical. Never call it on the event loop.
        """
        batch = self._check(stream, frames)
        if not len(batch):
            return np.empty(0, dtype=np.float32)
        if threading.current_thread() is self._thread:
            raise RuntimeError("probabilities_sync would wait on its own thread")
        future: concurrent.futures.Future[Float32Array] = concurrent.futures.Future()
        self._submit(_Request(stream, batch, future))
        return future.result(timeout)

    def _check(self, stream: VadStream, frames: Float32Array) -> Float32Array:
        if stream._engine is not self:
            raise ValueError("the stream was opened by another engine")
        # Read later, on the engine's thread: the frames are handed over, not copied.
        batch = np.asarray(frames, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != FRAME_SAMPLES:
            raise ValueError(f"frames must be (k, {FRAME_SAMPLES}), got {batch.shape}")
        return batch

    def _submit(self, request: _Request | list[_Request]) -> None:
        with self._lock:
            if self._closed:
                raise ShuttingDown("the VAD engine is closed")
            if self._thread is None:
                raise RuntimeError("the VAD engine is not started")
            self._inbox.put(request)

    # -- the engine's thread -------------------------------------------------------------

    def _serve(self) -> None:
        failure: BaseException = ShuttingDown("the VAD engine is closed")
        last_step = 0.0
        try:
            while True:
                # Block only when there is nothing to run; otherwise take what arrived.
                item = self._inbox.get() if not self._ready else self._take_nowait()
                while item is not None:
                    if not self._accept(item):
                        return
                    item = self._take_nowait()
                if self._ready:
                    if self.min_interval and not self._gather(last_step + self.min_interval):
                        return
                    last_step = time.perf_counter()
                    self._step()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("VAD engine thread failed")
            failure = ShuttingDown(f"the VAD engine failed: {exc!r}")
            with self._lock:
                self._closed = True
        finally:
            self._fail_all(failure)
            self._cpu_seen = time.thread_time()  # its clock goes with the thread

    def _gather(self, until: float) -> bool:
        """Let requests gather until ``until``, then take them; False on stop.

        One sleep rather than a wake-up per request: each wake-up takes the GIL from the
        event loop, which under load costs the loop more than the model's own work.
        """
        now = time.perf_counter()
        left = until - now
        if left > 0 and len(self._ready) < self.max_batch and self._others_expected(now):
            self._hurry.wait(left)  # cut short by a stream sending as fast as it is answered
        self._hurry.clear()
        item = self._take_nowait()
        while item is not None:
            if not self._accept(item):
                return False
            item = self._take_nowait()
        return True

    def _accept(self, item: object) -> bool:
        """Queue what came out of the inbox; False if it is the stop marker."""
        if item is _STOP:
            return False
        if isinstance(item, list):
            for request in item:
                self._enqueue(request)
        else:
            assert isinstance(item, _Request)
            self._enqueue(item)
        return True

    def _others_expected(self, now: float) -> bool:
        """Whether a stream that sent frames lately has none waiting now."""
        self._forget(now)
        return any(not stream._scheduled for stream in self._seen)

    def _forget(self, now: float) -> None:
        """Drop the streams that sent no frames for ``ACTIVE_WINDOW`` (oldest first)."""
        seen = self._seen
        while seen:
            stream, last = next(iter(seen.items()))
            if now - last <= ACTIVE_WINDOW:
                break
            del seen[stream]

    def _take_nowait(self) -> object | None:
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None

    def _enqueue(self, request: _Request) -> None:
        stream = request.stream
        if request.frames is not None and self.min_interval:  # only steps that wait ask
            now = time.perf_counter()
            self._seen[stream] = now
            self._seen.move_to_end(stream)
            self._forget(now)
        stream._pending.append(request)
        if not stream._scheduled:
            stream._scheduled = True
            self._ready.append(stream)

    def _plan(self, stream: VadStream) -> list[_Planned]:
        """The frames a stream runs in this step: its next ones, in order, up to a reset."""
        pending = stream._pending
        while pending and pending[0].frames is None:
            stream._zero()
            pending.popleft()
        plan: list[_Planned] = []
        for request in pending:
            frames = request.frames
            if frames is None:
                break  # the reset waits for the next step, after the frames before it
            take = min(len(frames) - request.done, self.max_frames - len(plan))
            plan.extend((request, i, frames[i]) for i in range(request.done, request.done + take))
            if len(plan) == self.max_frames:
                break
        return plan

    def _step(self) -> None:
        """Run the next frames of up to ``max_batch`` streams, one model call per frame index.

        Call ``k`` holds the ``k``-th planned frame of every stream that has one, so a
        stream's frames still run one after another, each from the state the one before
        left, while a stream with a backlog gets through several frames in one step.
        """
        streams: list[VadStream] = []
        plans: list[list[_Planned]] = []
        while self._ready and len(streams) < self.max_batch:
            stream = self._ready.popleft()
            plan = self._plan(stream)
            if plan:
                streams.append(stream)
                plans.append(plan)
            else:
                stream._scheduled = False
        if not streams:
            return
        self._running = [plan[0][0] for plan in plans]
        self.steps_run += 1
        replies = _Replies()
        try:
            for k in range(max(len(plan) for plan in plans)):
                rows = [
                    (stream, plan[k])
                    for stream, plan in zip(streams, plans, strict=True)
                    if k < len(plan)
                ]
                if not self._call(rows, replies):
                    break
        finally:
            self._running = []
            for stream in streams:
                self._requeue(stream)
            replies.send()

    def _call(self, rows: list[tuple[VadStream, _Planned]], replies: _Replies) -> bool:
        """One model call over one frame of each row's stream; False if the model failed."""
        model = self._model
        assert model is not None
        count = len(rows)
        # One concatenate each (np.stack costs a Python-level step per row).
        frames = np.concatenate([frame for _, (_, _, frame) in rows]).reshape(count, FRAME_SAMPLES)
        state = np.ascontiguousarray(
            np.concatenate([stream.state for stream, _ in rows])
            .reshape(count, *STATE_SHAPE)
            .transpose(1, 0, 2)
        )
        context = np.concatenate([stream.context for stream, _ in rows])
        context = context.reshape(count, CONTEXT_SAMPLES)
        began = time.perf_counter()
        try:
            probs, new_state, new_context = model.run(frames, state, context)
        except Exception as exc:
            # The model failed these rows: their requests fail (frames not yet run are
            # dropped, the state keeps what was run before); other streams are unaffected.
            log.exception("VAD model call failed for %d rows", count)
            for stream, (request, _, _) in rows:
                stream._pending.popleft()
                replies.add(request, exc)
            return False
        elapsed = time.perf_counter() - began
        self.batches_run += 1
        self.frames_run += count
        by_row = new_state.transpose(1, 0, 2)
        for row, (stream, (request, i, _)) in enumerate(rows):
            # Copies: a view would keep the whole batch's arrays alive for an idle stream.
            stream.state = by_row[row].copy()
            stream.context = new_context[row].copy()
            request.out[i] = probs[row]
            request.done = i + 1
            if request.done == len(request.out):
                stream._pending.popleft()
                replies.add(request, request.out)
        if self.on_batch is not None:
            try:
                self.on_batch(count, elapsed)
            except Exception:
                log.exception("VAD on_batch callback failed")
        return True

    def _requeue(self, stream: VadStream) -> None:
        if stream._pending:
            self._ready.append(stream)
        else:
            stream._scheduled = False

    def _fail_all(self, error: BaseException) -> None:
        """Fail every request still held: in a step, in the ready queue or in the inbox."""
        replies = _Replies()
        self._ready.extend(request.stream for request in self._running)
        self._running = []
        while self._ready:
            stream = self._ready.popleft()
            stream._scheduled = False
            while stream._pending:
                replies.add(stream._pending.popleft(), error)
        while True:
            item = self._take_nowait()
            if item is None:
                break
            for request in item if isinstance(item, list) else [item]:
                if isinstance(request, _Request):
                    replies.add(request, error)
        replies.send()
