"""One stream's wiring: bytes -> decoder -> resamplers -> per channel chunker or segmenter
-> scheduler -> events, in audio order.

Transport-agnostic: the WebSocket and gRPC handlers both drive a ``StreamPipeline`` and
forward the events it emits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

from streamer.audio.decode import Decoder
from streamer.audio.formats import AudioFormat
from streamer.audio.framing import Framer
from streamer.audio.resample import ChannelResamplers
from streamer.errors import ErrorCode, InferenceError, ShuttingDown
from streamer.events import (
    Done,
    Event,
    Finalized,
    Route,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
    Turn,
    TurnWord,
)
from streamer.inference.model import shift_words
from streamer.inference.output import OutputError, json_safe
from streamer.inference.scheduler import Job, JobState, Scheduler
from streamer.observability.stream import StreamObserver
from streamer.segmentation import segmenter
from streamer.segmentation.segmenter import Segment, Segmenter, VadParams
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
    turns: TurnSettings | None = None
    """Detect each channel's turns and emit ``Turn`` events (segmented route only)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A result that will leave once its job is done (and everything before it has left)."""

    job: Job
    channel: int
    start: int
    end: int
    final: bool
    forced: bool = False


class StreamPipeline:
    """Turns one stream's audio into ordered events."""

    def __init__(
        self,
        stream_id: str,
        options: StreamOptions,
        *,
        scheduler: Scheduler,
        emit: Emit,
        vad: VadEngine | None = None,
        observer: StreamObserver | None = None,
        turns: TurnEngine | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.options = options
        self._scheduler = scheduler
        self.observer = observer or StreamObserver()
        self._emit = self.observer.watch(emit)
        fmt = options.fmt
        self._decoder = Decoder(fmt)
        work_rate = VAD_SAMPLE_RATE if options.route is Route.SEGMENTED else options.model_rate
        self._work_rate = work_rate
        self._resamplers = ChannelResamplers(fmt.channels, fmt.sample_rate, work_rate)
        self._order: asyncio.Queue[Event | _Pending | None] = asyncio.Queue()
        self._in_flight = asyncio.Semaphore(options.max_in_flight)
        self._channels: Sequence[_SimpleChannel | _SegmentedChannel]
        self._segmented: list[_SegmentedChannel] = []  # the same channels, if segmented
        self._vad = vad
        if options.route is Route.SEGMENTED:
            if vad is None:
                raise ValueError("the segmented route needs a VAD engine")
            params = options.vad_params or VadParams()
            if options.turns is not None and turns is None:
                raise ValueError("turn detection needs a turn engine")
            self._segmented = [
                _SegmentedChannel(
                    self,
                    c,
                    vad,
                    params,
                    options.interim,
                    None
                    if options.turns is None or turns is None
                    else _ChannelTurns(self, c, turns, options.turns, params),
                )
                for c in range(fmt.channels)
            ]
            self._channels = self._segmented
        else:
            chunk = max(1, round(options.chunk_seconds * work_rate))
            self._channels = [_SimpleChannel(self, c, chunk) for c in range(fmt.channels)]
        self._emitter: asyncio.Task[None] | None = None
        self._forcing = False  # a finalize is cutting the finals now queued
        self._forced = 0
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
        """Take one binary frame of audio; waits when too many inferences are in flight."""
        began = time.perf_counter()
        block = self._decoder.feed(data)
        if block.shape[1] == 0:
            return
        decoded = time.perf_counter()
        resampled = self._resamplers.process(block)
        self.observer.fed(
            block.shape[1] / self.options.fmt.sample_rate,
            self.audio_seconds,
            decoded - began,
            time.perf_counter() - decoded,
        )
        if len(self._segmented) > 1:
            await self._push_segmented(resampled)
            return
        for channel, samples in zip(self._channels, resampled, strict=True):
            await channel.push(samples)

    async def _push_segmented(self, resampled: list[NDArray[np.float32]]) -> None:
        """Every channel's VAD frames go in together, then each channel takes its own: one
        VAD step serves the message, rather than a step per channel (each waiting for the
        engine to stop expecting the next)."""
        channels = self._segmented
        frames = [c.frames(samples) for c, samples in zip(channels, resampled, strict=True)]
        assert self._vad is not None
        began = time.perf_counter()
        replies = self._vad.submit_all(
            [(c.vad_stream, f) for c, f in zip(channels, frames, strict=True)]
        )
        for channel, framed, reply in zip(channels, frames, replies, strict=True):
            if len(framed):
                await channel.segment(framed, reply, began)

    async def finalize(self) -> None:
        """Force final results for the audio so far; the stream goes on."""
        self.observer.flushed(self.audio_seconds)
        for index, channel in enumerate(self._channels):
            self._forcing = self.options.mark_finalize
            self._forced = 0
            try:
                await channel.finalize()
            finally:
                self._forcing = False
            if self.options.mark_finalize:
                self.post(Finalized(index, round(self.audio_seconds, 6), self._forced))

    async def steer(self, command: object) -> None:
        """A front-end's instruction: new turn thresholds (``TurnDetection``, anything
        with their three fields), or end the open turns now (``ForceEnd``)."""
        for channel in self._segmented:
            if channel.turns is None:
                continue
            if isinstance(command, ForceEnd):
                await channel.turns.force_end()
            else:
                channel.turns.retune(command)

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
        for channel, tail in zip(self._channels, self._resamplers.flush(), strict=True):
            await channel.push(tail)
            await channel.end()
        for segmented in self._segmented:
            if segmented.turns is not None:
                await segmented.turns.finish()
        self._order.put_nowait(None)
        if self._emitter is not None:
            await self._emitter
        self._emit(Done(audio_seconds=round(self.audio_seconds, 6)))

    async def abort(self) -> None:
        """The client went away: withdraw queued work and stop emitting."""
        self._scheduler.cancel_stream(self.stream_id)
        for segmented in self._segmented:
            if segmented.turns is not None:
                await segmented.turns.abort()
        if self._emitter is not None:
            self._emitter.cancel()
            await asyncio.gather(self._emitter, return_exceptions=True)
        self.observer.ended("aborted")

    # Used by the channel processors.

    def seconds(self, samples: int) -> float:
        return round(samples / self._work_rate, 6)

    def post(self, event: Event) -> None:
        self._order.put_nowait(event)

    async def infer(self, channel: int, start: int, audio: NDArray[np.float32]) -> None:
        """Queue a final inference; waits while the stream has too many in flight."""
        await self._in_flight.acquire()
        if self.failed.done():
            raise StreamBroken(f"stream {self.stream_id} broke and takes no more audio")
        self._order.put_nowait(self._submit(channel, start, audio, final=True))

    def infer_interim(self, channel: int, start: int, audio: NDArray[np.float32]) -> Job:
        """Queue an interim inference without waiting; the caller coalesces."""
        pending = self._submit(channel, start, audio, final=False)
        self._order.put_nowait(pending)
        return pending.job

    def _submit(
        self, channel: int, start: int, audio: NDArray[np.float32], *, final: bool
    ) -> _Pending:
        end = start + len(audio)
        forced = final and self._forcing
        self._forced += forced
        if self._work_rate != self.options.model_rate:
            audio = soxr.resample(audio, self._work_rate, self.options.model_rate).astype(
                np.float32, copy=False
            )
        job = self._scheduler.submit(
            self.stream_id, audio, final=final, words=final and self.options.words
        )
        self.observer.inference(job, channel, self.seconds(start), self.seconds(end), final)
        return _Pending(job, channel, start, end, final, forced)

    def cancel(self, job: Job) -> bool:
        return self._scheduler.cancel(job)

    def decode(self, audio: NDArray[np.float32]) -> Job:
        """Recognize a turn's audio (at the work rate), with word times, outside the
        order of results: its text goes to the turn, not to a segment."""
        if self._work_rate != self.options.model_rate:
            audio = soxr.resample(audio, self._work_rate, self.options.model_rate).astype(
                np.float32, copy=False
            )
        return self._scheduler.submit(self.stream_id, audio, final=True, words=True)

    async def _emit_in_order(self) -> None:
        try:
            await self._emit_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A server fault: say so and stop, never leave the stream silent.
            log.exception("stream %s failed while emitting its results", self.stream_id)
            self._scheduler.cancel_stream(self.stream_id)
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
            await asyncio.wait({item.job.future})
            if item.final:
                self._in_flight.release()
            if item.job.state is JobState.CANCELLED:
                continue  # a superseded interim
            self._emit(self._result(item))

    def _result(self, item: _Pending) -> Event:
        """The event for a finished inference: its result, or an error for its audio."""
        start, end = self.seconds(item.start), self.seconds(item.end)
        exc = item.job.future.exception()
        if isinstance(exc, InferenceError):
            return StreamError(
                code=exc.code,
                message=exc.message,
                channel=item.channel,
                start=start,
                end=end,
                retryable=exc.retryable,
            )
        if exc is not None:
            raise exc
        try:
            output = shift_words(json_safe(item.job.future.result()), start)
        except OutputError as error:
            log.warning("unusable model output: %s", error)
            return StreamError(
                code=ErrorCode.MODEL_ERROR,
                message=str(error),
                channel=item.channel,
                start=start,
                end=end,
                retryable=False,
            )
        return SegmentResult(item.channel, start, end, item.final, output, item.forced)


class _SimpleChannel:
    """Cuts one channel into chunks of a fixed duration; every chunk is inferred."""

    def __init__(self, pipeline: StreamPipeline, index: int, chunk: int) -> None:
        self._pipeline = pipeline
        self._index = index
        self._framer = Framer(chunk)
        self._position = 0

    async def _send(self, audio: NDArray[np.float32]) -> None:
        await self._pipeline.infer(self._index, self._position, audio)
        self._position += len(audio)

    async def push(self, samples: NDArray[np.float32]) -> None:
        for chunk in self._framer.push(samples):
            await self._send(chunk)

    async def finalize(self) -> None:
        tail = self._framer.take_tail()
        if len(tail):
            await self._send(tail)

    async def end(self) -> None:
        await self.finalize()


class _SegmentedChannel:
    """Runs one channel through the shared VAD and its own segmenter."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        index: int,
        vad: VadEngine,
        params: VadParams,
        interim: bool,
        turns: _ChannelTurns | None = None,
    ) -> None:
        self.turns = turns
        self._pipeline = pipeline
        self._index = index
        self._vad = vad
        self.vad_stream = vad.open_stream()
        self._framer = Framer(FRAME_SAMPLES)
        self._segmenter = Segmenter(params, interim=interim, sample_rate=VAD_SAMPLE_RATE)
        self._interim: Job | None = None

    async def push(self, samples: NDArray[np.float32]) -> None:
        frames = self.frames(samples)
        if len(frames):
            began = time.perf_counter()
            await self.segment(frames, self._vad.submit(self.vad_stream, frames), began)

    def frames(self, samples: NDArray[np.float32]) -> NDArray[np.float32]:
        """The whole VAD frames the samples complete, ``(k, 512)`` (``k`` may be 0)."""
        return self._framer.push_block(samples)

    async def segment(self, frames: NDArray[np.float32], reply: VadReply, began: float) -> None:
        """Run frames handed to the VAD (``reply``, since ``began``) through the segmenter."""
        probs = await reply.get()
        self._pipeline.observer.vad(len(frames), time.perf_counter() - began)
        push = self._segmenter.push
        values = probs.tolist()
        for frame, prob in zip(frames, values, strict=True):
            if events := push(frame, prob):
                await self._handle(events)
        if self.turns is not None:
            await self.turns.push(frames, values)

    async def finalize(self) -> None:
        # Everything received so far counts, the partial VAD frame included.
        await self._handle(self._segmenter.flush(self._framer.take_tail()))

    async def end(self) -> None:
        await self.finalize()

    async def _handle(
        self, events: list[segmenter.SpeechStarted | segmenter.SpeechEnded | Segment]
    ) -> None:
        pipeline = self._pipeline
        for event in events:
            if isinstance(event, segmenter.SpeechStarted):
                pipeline.post(SpeechStarted(self._index, pipeline.seconds(event.start)))
            elif isinstance(event, segmenter.SpeechEnded):
                pipeline.post(SpeechEnded(self._index, pipeline.seconds(event.end)))
            elif event.is_final:
                self._drop_interim()
                await pipeline.infer(self._index, event.start, event.audio)
            else:
                self._drop_interim()
                self._interim = pipeline.infer_interim(self._index, event.start, event.audio)

    def _drop_interim(self) -> None:
        """Only the newest interim of a segment is worth running."""
        if self._interim is not None and self._interim.state is JobState.QUEUED:
            self._pipeline.cancel(self._interim)
        self._interim = None


class _ChannelTurns:
    """One channel's turn detection carried out: its tracker's steps become ``Turn``
    events, requests to the shared turn engine, and decodes of the turn's audio."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        index: int,
        engine: TurnEngine,
        settings: TurnSettings,
        params: VadParams,
    ) -> None:
        self._pipeline = pipeline
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
        """New thresholds (the three of Flux), the other settings kept."""
        settings = self.tracker.stage.settings
        self.tracker.settings(
            TurnSettings(
                eot_threshold=getattr(command, "eot_threshold", settings.eot_threshold),
                eager_eot_threshold=getattr(
                    command, "eager_eot_threshold", settings.eager_eot_threshold
                ),
                eot_timeout_ms=getattr(command, "eot_timeout_ms", settings.eot_timeout_ms),
                min_pause_ms=settings.min_pause_ms,
                rescore_ms=settings.rescore_ms,
                update_ms=settings.update_ms,
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
                self._pipeline.post(self._event(step))
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
            job = self._pipeline.decode(decode.audio)
            await asyncio.wait({job.future})
            exc = job.future.exception()
            if exc is None:
                output = shift_words(json_safe(job.future.result()), decode.start)
                text, words = _transcript(output)
                self._carry(self.tracker.transcript(decode.key, text, words))
            elif isinstance(exc, InferenceError):
                log.warning("a turn's transcript failed: %s", exc.message)
            else:
                raise exc
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
