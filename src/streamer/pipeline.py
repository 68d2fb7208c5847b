"""One stream's async shell: bytes -> decoder -> the route (sans-I/O) -> its work carried
out against the shared engines (the VAD, the inference backend) -> events, in audio order.

The route decides everything per stream (``streamer.route``); the pipeline is the one part
that awaits: it hands the route's VAD frames to the engine and their probabilities back,
submits the route's inferences, withdraws what the route withdraws, and sends every event
in the order the route produced it. Transport-agnostic: every front-end drives a
``StreamPipeline`` and forwards the events it emits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

from streamer.audio.decode import Decoder
from streamer.audio.formats import AudioFormat
from streamer.errors import ErrorCode, InferenceError, ShuttingDown
from streamer.events import Done, Event, Route, SegmentResult, StreamError, Turn, TurnWord
from streamer.inference.backend import InferenceBackend, Ticket
from streamer.inference.model import shift_words
from streamer.inference.output import OutputError, json_safe
from streamer.observability.stream import StreamObserver
from streamer.route.lag import LagWatch
from streamer.route.segmented import Frames, SegmentedRoute
from streamer.route.simple import SimpleRoute
from streamer.route.work import Adopt, Infer, Post, Work
from streamer.segmentation.segmenter import VadParams
from streamer.segmentation.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE, VadEngine, VadReply
from streamer.turn.engine import TurnEngine, TurnStream
from streamer.turn.stage import ForceEnd, TurnEvent, TurnSettings, WithdrawScore, Word
from streamer.turn.tracker import Decode, Score, Step, TurnTracker

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]

__all__ = ["Emit", "Event", "Route", "StreamBroken", "StreamOptions", "StreamPipeline"]


class StreamBroken(RuntimeError):
    """The stream's emitter failed; the stream can take no more audio."""


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Everything one stream needs to know about itself."""

    route: Route
    fmt: AudioFormat
    model_rate: int
    chunk_seconds: float = 1.0
    max_in_flight: int = 4
    interim: bool = False
    vad_params: VadParams | None = None
    words: bool = False
    """Finals carry word times (for a model that gives them)."""
    mark_finalize: bool = False
    """Mark the finals a ``finalize`` forces (``SegmentResult.forced``) and follow each
    channel's with ``Finalized``, for front-ends that tell their clients so."""
    max_lag: float = 0.0
    """Seconds results may lag their audio's arrival before the stream is told
    (``falling_behind``, at most once per this many seconds); 0: never."""
    speculate: bool = False
    """The segmented route decodes each segment's final ahead, at a pause
    (``SegmentedRoute``'s ``speculate``)."""
    speculate_pad_ms: float | None = None
    """How much of a pause is in when the final is decoded ahead (``None``: the VAD's
    ``speech_pad_ms``); a segment closing in that pause ends there."""
    turns: TurnSettings | None = None
    """Detect each channel's turns and emit ``Turn`` events (segmented route only)."""
    segments: bool = True
    """Infer and send the segmented route's segments (False: turns alone, no inference
    for segments)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A result that will leave once its ticket is done (and everything before it has left)."""

    ticket: Ticket
    infer: Infer


class StreamPipeline:
    """Turns one stream's audio into ordered events."""

    def __init__(
        self,
        stream_id: str,
        options: StreamOptions,
        *,
        backend: InferenceBackend,
        emit: Emit,
        vad: VadEngine | None = None,
        observer: StreamObserver | None = None,
        pressed: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        turns: TurnEngine | None = None,
    ) -> None:
        """``pressed``: whether the server measures that it is not keeping up now (for
        ``falling_behind``); ``clock``: seconds, for the lag of results."""
        self.stream_id = stream_id
        self.options = options
        self._backend = backend
        self.observer = observer or StreamObserver()
        self._emit = self.observer.watch(emit)
        fmt = options.fmt
        self._decoder = Decoder(fmt)
        self._order: asyncio.Queue[Event | _Pending | None] = asyncio.Queue()
        self._in_flight = asyncio.Semaphore(options.max_in_flight)
        self._interims: dict[int, Ticket] = {}  # by key: what the route may withdraw
        self._speculative: dict[int, _Pending] = {}  # by key: kept aside until adopted
        self._deferred: dict[int, Infer] = {}  # by key: speculations not submitted
        self._lag = LagWatch(options.max_lag, clock, pressed) if options.max_lag > 0 else None
        self._vad = vad
        self._at_vad = 0  # VAD requests whose probabilities are not back yet
        self._backlog: deque[Sequence[Work]] = deque()  # the route's work not yet carried
        self._carrying: asyncio.Task[None] | None = None  # carries the backlog out
        self._waiter: asyncio.Future[None] | None = None  # a feed waiting on the two
        self._failure: BaseException | None = None  # what broke the VAD or the work
        self._ended = False  # aborted: late probabilities are dropped
        self._turns: list[_ChannelTurns] = []
        """Each channel's turn detection, when the stream asked for it."""
        self._route: SimpleRoute | SegmentedRoute
        if options.route is Route.SEGMENTED:
            if vad is None:
                raise ValueError("the segmented route needs a VAD engine")
            self._route = SegmentedRoute(
                fmt.channels,
                fmt.sample_rate,
                options.model_rate,
                options.vad_params or VadParams(),
                interim=options.interim,
                mark_finalize=options.mark_finalize,
                speculate=options.speculate,
                speculate_pad_ms=options.speculate_pad_ms,
                segments=options.segments,
            )
            self._vad_streams = [vad.open_stream() for _ in range(fmt.channels)]
            if options.turns is not None:
                if turns is None:
                    raise ValueError("turn detection needs a turn engine")
                params = options.vad_params or VadParams()
                self._turns = [
                    _ChannelTurns(
                        c, turns, options.turns, params, post=self.post, decode=self.decode
                    )
                    for c in range(fmt.channels)
                ]
        else:
            self._route = SimpleRoute(
                fmt.channels,
                fmt.sample_rate,
                options.model_rate,
                options.chunk_seconds,
                mark_finalize=options.mark_finalize,
            )
        self._emitter: asyncio.Task[None] | None = None
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the stream broke on a server fault (logged): it must be aborted."""

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received so far (per channel)."""
        return self._decoder.frames_decoded / self.options.fmt.sample_rate

    def start(self) -> None:
        self.observer.started()
        self._emitter = asyncio.create_task(self._emit_in_order(), name="stream-emitter")

    async def feed(self, data: bytes) -> None:
        """Take one binary frame of audio; waits when too many inferences are in flight
        (or, segmented, while the stream's previous message is still at the VAD)."""
        wait = self.feed_nowait(data)
        if wait is not None:
            await wait

    def feed_nowait(self, data: bytes) -> Coroutine[Any, Any, None] | None:
        """``feed`` without a coroutine of its own where none is needed: the audio is
        taken now, and what is returned, if anything, must be awaited before the next
        message is fed (the stream holds its sender back), or closed if the connection
        ends first. A message in real time usually returns None."""
        began = time.perf_counter()
        block = self._decoder.feed(data)
        if block.shape[1] == 0:
            return None
        decoded = time.perf_counter()
        route = self._route
        if isinstance(route, SimpleRoute):
            work = route.push(block)  # resampled and chunked
            self._fed(block.shape[1], began, decoded)
            return self._carry(work) if work else None
        frames = route.push(block)  # resampled and framed
        self._fed(block.shape[1], began, decoded)
        return self._segment(route, frames)

    def _fed(self, samples: int, began: float, decoded: float) -> None:
        """A message of ``samples`` per channel was decoded by ``decoded`` and resampled
        (and framed or chunked) by now."""
        total = self.audio_seconds
        media = samples / self.options.fmt.sample_rate
        self.observer.fed(media, total, decoded - began, time.perf_counter() - decoded)
        if self._lag is not None:
            self._lag.fed(total)

    def _segment(
        self, route: SegmentedRoute, frames: list[Frames]
    ) -> Coroutine[Any, Any, None] | None:
        """Every channel's VAD frames go in together, then each channel takes its own: one
        VAD step serves the message, rather than a step per channel (each waiting for the
        engine to stop expecting the next).

        Without turn detection the probabilities are taken where the engine hands them
        back (``_probabilities``, a callback on the loop), and the wait returned is only
        for a message whose previous one is still at the engine, or whose stream's work
        waits for an inference slot: a stream in real time never waits at all, and a
        faster one stays one message ahead of its probabilities."""
        if self._turns:  # turn detection awaits its own stage between frames
            return self._segment_turns(route, frames)
        if self._failure is not None:
            return self._settled()  # raises
        began = time.perf_counter()
        handed = [
            (
                self._vad_streams[channel],
                framed,
                functools.partial(self._probabilities, route, channel, framed, began),
            )
            for channel, framed in enumerate(frames)
            if len(framed)
        ]
        if not handed:
            return None
        assert self._vad is not None
        self._vad.submit_then(handed)
        self._at_vad += len(handed)
        if self._at_vad > len(handed) or self._carrying is not None:
            return self._settled(len(handed))
        return None

    async def _segment_turns(self, route: SegmentedRoute, frames: list[Frames]) -> None:
        """``_segment`` with turn detection: each channel's probabilities awaited, and its
        turn stage's, before the next message."""
        assert self._vad is not None
        began = time.perf_counter()
        replies = self._vad.submit_all(list(zip(self._vad_streams, frames, strict=True)))
        for channel, (framed, reply) in enumerate(zip(frames, replies, strict=True)):
            if len(framed):
                await self._classified(route, channel, framed, reply, began)

    def _probabilities(
        self,
        route: SegmentedRoute,
        channel: int,
        frames: Frames,
        began: float,
        probs: NDArray[np.float32] | BaseException,
    ) -> None:
        """On the loop, from the VAD engine: a channel's probabilities into the route, and
        its work carried out (in order, behind any work still waiting)."""
        self._at_vad -= 1
        if self._ended:
            return
        if isinstance(probs, BaseException):
            self._break(probs)
            return
        try:
            work = self._segmented(route, channel, frames, probs, began)
        except Exception as exc:
            self._break(exc)
            return
        if work:
            self._backlog.append(work)
            if self._carrying is None:
                self._carrying = asyncio.create_task(self._carry_backlog(), name="stream-work")
        self._wake()

    async def _carry_backlog(self) -> None:
        """The route's work from ``_probabilities``, carried out in order."""
        try:
            while self._backlog:
                await self._carry(self._backlog.popleft())
        except Exception as exc:
            self._break(exc)
        finally:
            self._carrying = None
            self._wake()

    def _break(self, error: BaseException) -> None:
        """The stream's VAD or work failed (logged): it must be aborted."""
        if self._failure is None:
            self._failure = error
            if not isinstance(error, StreamBroken):
                log.error("stream %s failed", self.stream_id, exc_info=error)
        if not self.failed.done():
            self.failed.set_result(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _settled(self, ahead: int = 0) -> None:
        """Wait until at most ``ahead`` VAD requests are out and no work waits; raise
        what broke the stream, if anything did."""
        while self._failure is None and (self._at_vad > ahead or self._carrying is not None):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._failure is not None:
            raise StreamBroken(
                f"stream {self.stream_id} broke and takes no more audio"
            ) from self._failure

    def _segmented(
        self,
        route: SegmentedRoute,
        channel: int,
        frames: Frames,
        probs: NDArray[np.float32],
        began: float,
    ) -> Sequence[Work]:
        """A channel's probabilities, for frames handed to the VAD at ``began``, into the
        route: its work (most messages make none)."""
        self.observer.vad(
            len(frames) * FRAME_SAMPLES / VAD_SAMPLE_RATE, time.perf_counter() - began
        )
        return route.segment(channel, frames, probs)

    async def _classified(
        self, route: SegmentedRoute, channel: int, frames: Frames, reply: VadReply, began: float
    ) -> None:
        """A channel's frames handed to the VAD (since ``began``): their probabilities back
        into the route, and its work carried out."""
        probs = await reply.get()
        if work := self._segmented(route, channel, frames, probs, began):
            await self._carry(work)
        if self._turns:
            await self._turns[channel].push(frames, probs.tolist())

    async def finalize(self) -> None:
        """Force final results for the audio so far; the stream goes on. With turn
        detection the open turns end too (trigger ``manual``), as a front-end's
        ``ForceEnd`` ends them: all of the audio so far is final."""
        await self._settled()
        self.observer.flushed(self.audio_seconds)
        await self._carry(self._route.finalize())
        for turns in self._turns:
            await turns.force_end()

    async def steer(self, command: object) -> None:
        """A front-end's instruction: new turn thresholds (``TurnDetection``, anything
        with their three fields), or end the open turns now (``ForceEnd``)."""
        for turns in self._turns:
            if isinstance(command, ForceEnd):
                await turns.force_end()
            else:
                turns.retune(command)

    def post(self, event: Event) -> None:
        """Send ``event`` once everything before it has been sent."""
        self._order.put_nowait(event)

    def decode(self, audio: NDArray[np.float32]) -> Ticket:
        """Recognize a turn's audio (16 kHz), with word times, outside the order of
        results: its text goes to the turn, not to a segment. The ticket to await."""
        rate = self.options.model_rate
        if rate != VAD_SAMPLE_RATE:
            audio = soxr.resample(audio, VAD_SAMPLE_RATE, rate).astype(np.float32, copy=False)
        return self._backend.submit(self.stream_id, audio, final=True, words=True)

    async def finish(self) -> None:
        """End of audio: process what is left, wait for every result, then send ``done``."""
        self.observer.flushed(self.audio_seconds)
        try:
            await self._finish()
        except BaseException as exc:
            self.observer.ended("error", exc)
            raise
        self.observer.ended("completed")

    async def _finish(self) -> None:
        await self._settled()
        if self._decoder.pending_bytes:
            self._order.put_nowait(
                StreamError(
                    code=ErrorCode.INCOMPLETE_FRAME,
                    message=(
                        f"the last {self._decoder.pending_bytes} bytes did not make a whole "
                        "sample frame and were dropped"
                    ),
                )
            )
        route = self._route
        if isinstance(route, SimpleRoute):
            await self._carry(route.end())
        else:
            assert self._vad is not None
            for channel, framed in enumerate(route.drain()):
                if len(framed):
                    began = time.perf_counter()
                    reply = self._vad.submit(self._vad_streams[channel], framed)
                    await self._classified(route, channel, framed, reply, began)
                await self._carry(route.end_channel(channel))
            for turns in self._turns:
                await turns.finish()
        self._order.put_nowait(None)
        if self._emitter is not None:
            await self._emitter
        self._emit(Done(audio_seconds=round(self.audio_seconds, 6)))

    async def abort(self) -> None:
        """The client went away: withdraw queued work and stop emitting."""
        self._ended = True
        self._backlog.clear()
        carrying = self._carrying  # gone from the field once its cancellation runs
        if carrying is not None:
            carrying.cancel()
        self._backend.cancel_stream(self.stream_id)
        for turns in self._turns:
            await turns.abort()
        if self._emitter is not None:
            self._emitter.cancel()
        tasks = [task for task in (self._emitter, carrying) if task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self.observer.ended("aborted")

    async def _carry(self, work: Sequence[Work]) -> None:
        """Carry out the route's work, in order; a final waits while the stream has
        ``max_in_flight`` of them running."""
        order = self._order
        for item in work:
            if isinstance(item, Post):
                order.put_nowait(item.event)
            elif isinstance(item, Adopt) and item.key in self._deferred:
                # Not decoded ahead: decoded now, as the final it is.
                infer = self._deferred.pop(item.key)
                self.observer.speculated("deferred")
                await self._carry((replace(infer, speculative=False, forced=item.forced),))
            elif isinstance(item, Adopt):
                pending = self._speculative.pop(item.key)
                self.observer.speculated("used")
                if item.forced:
                    pending.ticket.hasten()  # someone waits on it now
                await self._in_flight.acquire()
                if self.failed.done():
                    raise StreamBroken(f"stream {self.stream_id} broke and takes no more audio")
                infer = pending.infer
                order.put_nowait(_Pending(pending.ticket, replace(infer, forced=item.forced)))
            elif isinstance(item, Infer) and item.speculative and self._backend.behind:
                # The model is behind: a decode queued now would start late, crowd the
                # finals asked for before it, and run for nothing if speech resumes. The
                # final is decoded when it is asked for, as without speculation.
                self._deferred[item.key] = item
            elif isinstance(item, Infer):
                if item.final and not item.speculative:
                    await self._in_flight.acquire()
                    if self.failed.done():
                        raise StreamBroken(f"stream {self.stream_id} broke and takes no more audio")
                ticket = self._backend.submit(
                    self.stream_id,
                    item.audio,
                    final=item.final,
                    words=item.final and self.options.words,
                    forced=item.forced,
                )
                if not item.final:
                    self._interims[item.key] = ticket
                if not ticket.done():  # an interim dropped on submission never runs
                    self._observe(ticket, item)
                if item.speculative:
                    # A withdrawn one's error is nobody's to see: retrieve it so asyncio
                    # does not report it as never retrieved.
                    ticket.add_done_callback(_retrieve)
                    self._speculative[item.key] = _Pending(ticket, item)
                else:
                    order.put_nowait(_Pending(ticket, item))
            elif (withdrawn := self._interims.pop(item.key, None)) is not None:
                withdrawn.cancel()
            elif (speculation := self._speculative.pop(item.key, None)) is not None:
                speculation.ticket.cancel()  # if a worker has it, its result goes unsent
                self.observer.speculated("discarded")
            elif self._deferred.pop(item.key, None) is not None:
                self.observer.speculated("discarded")

    def _observe(self, ticket: Ticket, item: Infer) -> None:
        span = self.observer.inference(item.channel, item.start, item.end, item.final)
        if span is not None:
            ticket.add_done_callback(
                lambda t: span(None if t.cancelled() else t.exception(), t.cancelled())
            )

    async def _emit_in_order(self) -> None:
        try:
            await self._emit_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A server fault: say so and stop, never leave the stream silent.
            log.exception("stream %s failed while emitting its results", self.stream_id)
            self._backend.cancel_stream(self.stream_id)
            if not self.failed.done():
                self.failed.set_result(None)
            for _ in range(self.options.max_in_flight):
                self._in_flight.release()  # a feed waiting for a slot gets StreamBroken
            raise

    async def _emit_all(self) -> None:
        while (item := await self._order.get()) is not None:
            if not isinstance(item, _Pending):
                self._emit(item)
                continue
            infer = item.infer
            ticket = item.ticket
            output: object
            try:
                output = await ticket
            except asyncio.CancelledError:
                if not ticket.cancelled():
                    raise  # this task itself is cancelled
                output = None
            except Exception as exc:
                output = exc
            if infer.final:
                self._in_flight.release()
            else:
                self._interims.pop(infer.key, None)
            if ticket.cancelled():
                continue  # a superseded interim
            event = self._result(infer, output)
            self._emit(event)
            if (
                self._lag is not None
                and isinstance(event, SegmentResult)
                and (lag := self._lag.behind(infer.end)) is not None
            ):
                self._emit(
                    StreamError(
                        ErrorCode.FALLING_BEHIND.value,
                        f"this stream's results are {lag:.1f} s behind its audio (the "
                        f"server's bound: {self._lag.max_lag:g} s); the server is overloaded",
                        retryable=True,
                    )
                )

    def _result(self, infer: Infer, output: object) -> Event:
        """The event for a finished inference: its result, or an error for its audio."""
        start, end = infer.start, infer.end
        if isinstance(output, InferenceError):
            return StreamError(
                code=output.code,
                message=output.message,
                channel=infer.channel,
                start=start,
                end=end,
                retryable=output.retryable,
            )
        if isinstance(output, BaseException):
            raise output
        try:
            result = shift_words(json_safe(output), start)
        except OutputError as error:
            log.warning("unusable model output: %s", error)
            return StreamError(
                code=ErrorCode.MODEL_ERROR,
                message=str(error),
                channel=infer.channel,
                start=start,
                end=end,
                retryable=False,
            )
        return SegmentResult(infer.channel, start, end, infer.final, result, infer.forced)


class _ChannelTurns:
    """One channel's turn detection carried out: its tracker's steps become ``Turn``
    events (handed to ``post``, in the stream's order), requests to the shared turn
    engine, and decodes of the turn's audio (``decode``: 16 kHz audio in, a ticket out)."""

    def __init__(
        self,
        index: int,
        engine: TurnEngine,
        settings: TurnSettings,
        params: VadParams,
        *,
        post: Callable[[Event], None],
        decode: Callable[[NDArray[np.float32]], Ticket],
    ) -> None:
        self._post = post
        self._recognize = decode
        self._index = index
        self._engine = engine
        self._stream: TurnStream = engine.open_stream()
        neg = params.neg_threshold
        self.tracker = TurnTracker(
            settings,
            threshold=params.threshold,
            neg_threshold=max(0.01, params.threshold - 0.15) if neg is None else neg,
            # As the segmenter's: a click or a breath does not open a turn.
            min_speech_frames=max(
                1, -(-params.min_speech_ms * VAD_SAMPLE_RATE // 1000 // FRAME_SAMPLES)
            ),
            frame_samples=FRAME_SAMPLES,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._decoding: asyncio.Future[None] | None = None
        """The newest decode of the turn's audio, until its transcript is in."""

    async def push(self, frames: NDArray[np.float32], probs: list[float]) -> None:
        """The channel's next frames, one at a time: while a pause waits for its decode,
        the next silent frame waits too, so that a pause cannot reach the timeout (and end
        the turn) before the turn's transcript is in. Audio sent faster than real time
        is held back by the recognizer; audio in real time rarely is."""
        for index, prob in enumerate(probs):
            pending = self._decoding
            if pending is not None and not pending.done() and self.tracker.paused:
                await asyncio.shield(pending)
            self._carry(self.tracker.push(frames[index : index + 1], [prob]))

    def retune(self, command: object) -> None:
        """New thresholds (the three of Flux, and the least pause a model's end needs),
        the other settings kept."""
        settings = self.tracker.stage.settings
        self.tracker.settings(
            replace(
                settings,
                eot_threshold=getattr(command, "eot_threshold", settings.eot_threshold),
                eager_eot_threshold=getattr(
                    command, "eager_eot_threshold", settings.eager_eot_threshold
                ),
                eot_timeout_ms=getattr(command, "eot_timeout_ms", settings.eot_timeout_ms),
                min_end_silence_ms=getattr(
                    command, "min_end_silence_ms", settings.min_end_silence_ms
                ),
            )
        )

    async def force_end(self) -> None:
        """End the open turn with its transcript brought up to now."""
        decode = self.tracker.end_decode()
        if decode is not None:
            await self._decode(decode, self._decode_started())
        elif self._decoding is not None:
            await asyncio.shield(self._decoding)
        self._carry(self.tracker.force_end())

    async def finish(self) -> None:
        """End of audio: every answer in, then a turn still open ends."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.tracker.open:
            await self.force_end()
        self._engine.withdraw(self._stream)

    async def abort(self) -> None:
        self._engine.withdraw(self._stream)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _carry(self, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, TurnEvent):
                self._post(self._event(step))
            elif isinstance(step, WithdrawScore):
                self._engine.withdraw(self._stream)
            else:
                done = None if step.decode is None else self._decode_started()
                task = asyncio.create_task(self._answer(step, done), name="turn-answer")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _decode_started(self) -> asyncio.Future[None]:
        """A decode is on its way: what waits for its transcript waits on this."""
        self._decoding = asyncio.get_running_loop().create_future()
        return self._decoding

    async def _answer(self, score: Score, decoded: asyncio.Future[None] | None) -> None:
        """The engine's answer to a score, after the transcript it must follow."""
        try:
            reply = self._engine.submit(self._stream, score.window)
        except ShuttingDown:
            if decoded is not None and not decoded.done():
                decoded.set_result(None)
            return
        if score.decode is not None and decoded is not None:
            await self._decode(score.decode, decoded)
        elif self._decoding is not None:
            await asyncio.shield(self._decoding)
        try:
            answer = await reply.get()
        except ShuttingDown:
            return
        if answer is not None:
            self._carry(self.tracker.probability(score.request, answer.probability))

    async def _decode(self, decode: Decode, done: asyncio.Future[None]) -> None:
        try:
            try:
                output = await self._recognize(decode.audio)
            except InferenceError as error:
                log.warning("a turn's transcript failed: %s", error.message)
                return
            text, words = _transcript(shift_words(json_safe(output), decode.start))
            self._carry(self.tracker.transcript(decode.key, text, words))
        except OutputError as error:
            log.warning("unusable model output for a turn: %s", error)
        finally:
            if not done.done():
                done.set_result(None)

    def _event(self, event: TurnEvent) -> Turn:
        return Turn(
            channel=self._index,
            event=event.kind.value,
            turn_index=event.turn_index,
            transcript=event.transcript,
            words=tuple(TurnWord(w.word, w.confidence, w.start, w.end) for w in event.words),
            audio_window_start=round(event.audio_window_start, 6),
            audio_window_end=round(event.audio_window_end, 6),
            end_of_turn_confidence=event.end_of_turn_confidence,
            trigger=None if event.trigger is None else event.trigger.value,
        )


def _transcript(output: Mapping[str, Any]) -> tuple[str, tuple[Word, ...]]:
    """The text of a model's output and its words (times already in the stream's)."""
    text = output.get("text")
    raw = output.get("words")
    words: list[Word] = []
    if isinstance(raw, list):
        for item in raw:
            if not isinstance(item, Mapping) or not isinstance(item.get("word"), str):
                continue
            try:
                words.append(
                    Word(
                        item["word"].strip(),
                        float(item.get("confidence", item.get("probability", 1.0))),
                        float(item.get("start", 0.0)),
                        float(item.get("end", 0.0)),
                    )
                )
            except (TypeError, ValueError):
                continue
    return (text.strip() if isinstance(text, str) else ""), tuple(w for w in words if w.word)


def _retrieve(ticket: Ticket) -> None:
    if not ticket.cancelled():
        ticket.exception()
