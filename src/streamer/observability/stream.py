"""What one stream reports about itself: latency as users feel it, stage costs, spans.

``StreamPipeline`` calls a ``StreamObserver`` at a handful of points (audio fed, a VAD
call, an inference submitted and its outcome, results flushed, the stream ended) and passes
every event it emits through ``watch``; it reads nothing of the pipeline, the model or the
VAD but these calls. The base class ignores everything; ``StreamTelemetry`` turns the
calls into metrics and spans.

Cost is kept off the per-message path, which runs about ten times a second per stream:

- decode and resample costs are summed per stream and observed once per second of audio
  (and at the end), not per message;
- decoding and VAD waits get no span per message: each stream has one ``streamer.decode``
  and one ``streamer.vad`` span per ten seconds of audio, whose attributes sum what
  happened in that window (messages or calls, audio seconds, busy seconds, the longest);
- each inference gets its own span (a few per second per stream at most), and no span is
  made at all when the stream's span is not recording (tracing off, or not sampled).

Latency is measured against arrival times: for every message the observer notes the total
audio received and when; a result whose audio ends at ``t`` seconds is timed from the
arrival of the message that carried ``t``. A final forced by ``stop`` or ``finalize`` is
timed from that request instead, when it came later than the audio.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from streamer.events import SegmentResult, SpeechStarted, StreamError
from streamer.observability.gauges import SpeculationOutcome
from streamer.observability.logging import bind_stream, unbind_stream
from streamer.observability.tracing import format_traceparent, parse_traceparent

if TYPE_CHECKING:
    from streamer.observability.metrics import Metrics

__all__ = ["ArrivalClock", "InferenceDone", "StreamObserver", "StreamTelemetry"]

log = logging.getLogger(__name__)

E = TypeVar("E")

METRIC_WINDOW: Final = 1.0
"""Seconds of audio summed into one decode/resample observation."""
SPAN_WINDOW: Final = 10.0
"""Seconds of audio covered by one aggregated decode or VAD span."""
ARRIVAL_HORIZON: Final = 120.0
"""Seconds of audio whose arrival times are kept; older results go unmeasured."""
_EPSILON: Final = 1e-6  # event times are rounded to microseconds

InferenceDone = Callable[[BaseException | None, bool], None]
"""Told an inference's outcome: the error it failed with (or None), and whether it was
withdrawn."""


class ArrivalClock:
    """When the audio up to each point of a stream arrived."""

    __slots__ = ("_horizon", "_pruned", "_times", "_totals")

    def __init__(self, horizon: float = ARRIVAL_HORIZON) -> None:
        self._horizon = horizon
        self._totals: deque[float] = deque()
        self._times: deque[float] = deque()
        self._pruned = -1.0  # audio up to here is no longer known

    def record(self, total_seconds: float, now: float) -> None:
        """Audio up to ``total_seconds`` has arrived, at ``now`` (``perf_counter``)."""
        totals = self._totals
        totals.append(total_seconds)
        self._times.append(now)
        floor = total_seconds - self._horizon
        while len(totals) > 1 and totals[0] < floor:
            self._pruned = totals.popleft()
            self._times.popleft()

    def carried_to(self, seconds: float) -> float | None:
        """Where the message that carried the audio at ``seconds`` ended; None if unseen."""
        totals = self._totals
        if not totals or seconds <= self._pruned + _EPSILON:
            return None
        index = bisect_left(totals, seconds - _EPSILON)
        return totals[index] if index < len(totals) else None

    def sent_by(self, seconds: float) -> float | None:
        """The latest time a client sending in real time (with pauses, never ahead) can
        have sent the message that carried the audio at ``seconds``, whose audio ends at
        ``x``: a message goes once its audio is whole, so for it and any later one, whose
        audio ends at ``y`` and which arrived at ``t``, ``t - (y - x)``. None when unseen."""
        totals, times = self._totals, self._times
        if not totals or seconds <= self._pruned + _EPSILON:
            return None
        index = bisect_left(totals, seconds - _EPSILON)
        if index >= len(totals):
            return None
        return min(times[i] - totals[i] for i in range(index, len(totals))) + totals[index]

    def arrival(self, seconds: float) -> float | None:
        """When the audio at ``seconds`` arrived; ``None`` if unseen or forgotten.

        A point past the last message (rounding, resampler tails) maps to the last one.
        """
        totals = self._totals
        if not totals or seconds <= self._pruned + _EPSILON:
            return None
        index = bisect_left(totals, seconds - _EPSILON)
        return self._times[min(index, len(totals) - 1)]


class StreamObserver:
    """The hooks a pipeline calls; this base ignores them all."""

    traceparent: str | None = None
    """The W3C ``traceparent`` of the stream's span (for the ``ready`` event)."""
    trace_id: str | None = None
    """The stream's trace id (32 hex digits), for logs."""
    trace_ignored: bool = False
    """The client named a trace that was not a valid ``traceparent``; it was ignored."""

    def watch(self, emit: Callable[[E], None]) -> Callable[[E], None]:
        """Wrap the pipeline's emit function, to see every event it sends."""
        return emit

    def started(self) -> None:
        """The pipeline started (in the task that will drive it)."""

    def fed(self, media: float, total: float, decode: float, resample: float) -> None:
        """``media`` more seconds of audio arrived (``total`` so far), decoded in ``decode``
        and resampled in ``resample`` seconds."""

    def vad(self, media: float, seconds: float) -> None:
        """The stream waited ``seconds`` for VAD probabilities of ``media`` seconds of audio."""

    def inference(
        self, channel: int, start: float, end: float, final: bool
    ) -> InferenceDone | None:
        """An inference of ``[start, end)`` seconds of a channel was submitted (and not
        dropped at once); the callback returned, if any, is told its outcome."""
        return None

    def speculated(self, outcome: SpeculationOutcome) -> None:
        """A speculative final was adopted as the final (``used``), withdrawn
        (``discarded``), or never decoded ahead because the model was behind and decoded
        when the final was asked for (``deferred``)."""

    def flushed(self, total: float) -> None:
        """``stop`` or ``finalize``: results up to ``total`` seconds are forced out now."""

    def ended(self, outcome: str, error: BaseException | None = None) -> None:
        """The stream is over (``completed``, ``aborted`` or ``error``)."""


class _Window:
    """Many small operations summed into one span per ``length`` seconds of audio.

    Each operation has up to two timed parts, named by ``parts``; the span gets their sums
    (``streamer.<part>_seconds``), the longest operation and the audio covered.
    """

    __slots__ = (
        "_a", "_b", "_context", "_length", "_max", "_media", "_name", "_ops", "_parts",
        "_span", "_tracer",
    )  # fmt: skip

    def __init__(
        self, tracer: Tracer, name: str, context: Context, length: float, parts: Sequence[str]
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._length = length
        self._parts = tuple(parts)
        self._span: Span | None = None
        self._ops = 0
        self._media = self._max = self._a = self._b = 0.0

    def add(self, media: float, a: float, b: float = 0.0) -> None:
        if self._span is None:
            self._span = self._tracer.start_span(self._name, context=self._context)
        self._ops += 1
        self._media += media
        self._a += a
        self._b += b
        if a + b > self._max:
            self._max = a + b
        if self._media >= self._length - _EPSILON:
            self.close()

    def close(self) -> None:
        span = self._span
        if span is None:
            return
        span.set_attribute("streamer.operations", self._ops)
        span.set_attribute("streamer.audio_seconds", round(self._media, 6))
        span.set_attribute("streamer.max_seconds", self._max)
        for part, value in zip(self._parts, (self._a, self._b), strict=False):
            span.set_attribute(f"streamer.{part}_seconds", value)
        span.end()
        self._span = None
        self._ops = 0
        self._media = self._max = self._a = self._b = 0.0


class StreamTelemetry(StreamObserver):
    """Metrics, spans and log context of one stream."""

    def __init__(
        self,
        stream_id: str,
        route: str,
        *,
        tracer: Tracer,
        metrics: Metrics | None = None,
        parent: Context | None = None,
        links: Sequence[Link] = (),
        client_traceparent: str | None = None,
        trace_ignored: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream_id = stream_id
        self.route = route
        self._metrics = metrics
        self._tracer = tracer
        self._now = clock
        self._started = clock()
        self.span = tracer.start_span(
            "streamer.stream",
            context=parent,
            kind=SpanKind.SERVER,
            links=links,
            attributes={"streamer.route": route, "streamer.stream_id": stream_id},
        )
        span_context = self.span.get_span_context()
        if span_context.is_valid:
            self.traceparent = format_traceparent(span_context)
            self.trace_id = f"{span_context.trace_id:032x}"
        else:  # tracing disabled and no parent: the client's own, if valid, and no more
            self.traceparent = parse_traceparent(client_traceparent)
            self.trace_id = None
        self.trace_ignored = trace_ignored
        if trace_ignored:
            log.warning(
                "stream %s: the client's trace id is not a valid traceparent; ignored",
                stream_id,
            )
        self._recording = self.span.is_recording()
        context = trace.set_span_in_context(self.span)
        self._context = context
        self._decode_span = _Window(
            tracer, "streamer.decode", context, SPAN_WINDOW, ("decode", "resample")
        )
        self._vad_span = _Window(tracer, "streamer.vad", context, SPAN_WINDOW, ("wait",))
        self._arrivals = ArrivalClock()
        self._flushed_at: float | None = None
        self._flushed_total = 0.0
        self._first = False
        self._audio = 0.0
        self._errors = 0
        self._window_media = 0.0
        self._window_decode = 0.0
        self._window_resample = 0.0
        self._ended = False

    # -- hooks ----------------------------------------------------------------------------

    def watch(self, emit: Callable[[E], None]) -> Callable[[E], None]:
        def watched(event: E) -> None:
            self._sent(event)
            emit(event)

        return watched

    def started(self) -> None:
        bind_stream(self.stream_id, self.trace_id)
        log.info("stream started", extra={"route": self.route})

    def fed(self, media: float, total: float, decode: float, resample: float) -> None:
        self._arrivals.record(total, self._now())
        self._audio = total
        metrics = self._metrics
        if metrics is not None:
            self._window_media += media
            self._window_decode += decode
            self._window_resample += resample
            if self._window_media >= METRIC_WINDOW - _EPSILON:
                self._flush_stage_window(metrics)
        if self._recording:
            self._decode_span.add(media, decode, resample)

    def vad(self, media: float, seconds: float) -> None:
        if self._recording:
            self._vad_span.add(media, seconds)

    def inference(
        self, channel: int, start: float, end: float, final: bool
    ) -> InferenceDone | None:
        if not self._recording:
            return None
        span = self._tracer.start_span(
            "streamer.inference",
            context=self._context,
            attributes={
                "streamer.channel": channel,
                "streamer.start_time": start,
                "streamer.end_time": end,
                "streamer.final": final,
            },
        )

        def done(error: BaseException | None, cancelled: bool) -> None:
            if cancelled:
                span.set_attribute("streamer.cancelled", True)
            elif error is not None:
                span.set_attribute("streamer.error_code", str(getattr(error, "code", "error")))
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()

        return done

    def speculated(self, outcome: SpeculationOutcome) -> None:
        if self._metrics is not None:
            self._metrics.observe_speculative(self.route, outcome)

    def flushed(self, total: float) -> None:
        self._flushed_at = self._now()
        self._flushed_total = total

    def ended(self, outcome: str, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._metrics is not None and self._window_media > 0:
            self._flush_stage_window(self._metrics)
        self._decode_span.close()
        self._vad_span.close()
        span = self.span
        span.set_attribute("streamer.outcome", outcome)
        span.set_attribute("streamer.audio_seconds", round(self._audio, 6))
        if self._errors:
            span.set_attribute("streamer.error_events", self._errors)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        log.info(
            "stream ended",
            extra={"outcome": outcome, "audio_seconds": round(self._audio, 3)},
        )
        unbind_stream()

    # -- internals ------------------------------------------------------------------------

    def _flush_stage_window(self, metrics: Metrics) -> None:
        metrics.observe_stage("decode", self._window_media, self._window_decode)
        metrics.observe_stage("resample", self._window_media, self._window_resample)
        self._window_media = self._window_decode = self._window_resample = 0.0

    def _sent(self, event: object) -> None:
        if isinstance(event, SegmentResult):
            self._result(event)
        elif isinstance(event, SpeechStarted):
            self._first_result(self._now())
        elif isinstance(event, StreamError):
            self._errors += 1
            log.warning("error event %s: %s", event.code, event.message)

    def _first_result(self, now: float) -> None:
        if not self._first:
            self._first = True
            if self._metrics is not None:
                self._metrics.observe_first_result(self.route, now - self._started)

    def _result(self, event: SegmentResult) -> None:
        now = self._now()
        self._first_result(now)
        if self._metrics is None:
            return
        arrived = self._arrivals.arrival(event.end)
        if arrived is None:
            return
        if event.final and event.forced and self._flushed_at is not None:
            self._metrics.observe_finalize(self.route, max(0.0, now - self._flushed_at))
        if (
            event.final
            and self._flushed_at is not None
            and self._flushed_at > arrived
            and event.end >= self._flushed_total - 1e-3
        ):
            arrived = self._flushed_at  # forced by the client's request, not by the audio
        self._metrics.observe_latency(self.route, max(0.0, now - arrived), final=event.final)
