"""The stream factory: opening and ending one stream, the same for every transport.

It admits the stream (``admission.py``), gives it an id, resolves its options within the
server's bounds, builds its telemetry and its pipeline over the shared engines, and emits
``ready``; ending it flushes or withdraws its work and counts it out. The connection driver
hands it the ``StartRequest`` the machine accepted and gets back a running pipeline, or the
``ClientError`` that refused it. Built by the composition root (``app.py``) from plain values.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, replace
from typing import Any

from streamer.admission import Admission
from streamer.errors import InvalidFormat, InvalidMessage
from streamer.events import Ready, Route
from streamer.inference.model import Model
from streamer.inference.scheduler import Scheduler
from streamer.observability.metrics import Metrics
from streamer.observability.stream import StreamTelemetry
from streamer.observability.tracing import (
    TRACE_ID_IGNORED,
    ConnectionTrace,
    Tracing,
    parse_traceparent,
)
from streamer.pipeline import Emit, StreamOptions, StreamPipeline
from streamer.policy import ANONYMOUS, Principal
from streamer.protocol.messages import StartRequest
from streamer.segmentation.segmenter import VadParams, clamp
from streamer.segmentation.vad import VadEngine
from streamer.turn.engine import TurnEngine
from streamer.turn.stage import TurnSettings


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """The server's bounds and defaults for every stream (``[stream]``, and the lag past
    which a real-time stream is told it fell behind)."""

    chunk_seconds: float
    max_in_flight: int
    interim_interval: float
    min_interim_interval: float
    max_samples_per_second: int
    max_lag_seconds: float
    speculative_finals: bool = False
    speculative_pad_ms: float | None = None


class StreamFactory:
    """Opens and ends the streams of every connection of a server process."""

    def __init__(
        self,
        *,
        admission: Admission,
        model: Model,
        scheduler: Scheduler,
        vad: VadEngine,
        bounds: StreamBounds,
        metrics: Metrics,
        tracing: Tracing,
        turns: TurnEngine | None = None,
        turn_defaults: TurnSettings | None = None,
    ) -> None:
        self.admission = admission
        self.model = model
        self.scheduler = scheduler
        """The shared inference queue (started and closed by the composition root)."""
        self.vad = vad
        """The shared voice detector (started and closed by the composition root)."""
        self.turns = turns
        """The shared end-of-turn engine (closed by the composition root; started, which
        loads its model, by the first stream that detects turns). None: no turns."""
        self.turn_defaults = turn_defaults or TurnSettings()
        """A stream's turn settings but the thresholds its ``turn_detection`` gives."""
        self.bounds = bounds
        self.metrics = metrics
        self.tracing = tracing

    def open(
        self,
        route: Route,
        request: StartRequest,
        emit: Emit,
        connection: ConnectionTrace | None = None,
        *,
        principal: Principal = ANONYMOUS,
        chunk_seconds: float | None = None,
        mark_finalize: bool = False,
    ) -> StreamPipeline:
        """Admit a stream, start its pipeline and emit ``ready``.

        ``mark_finalize``: the front-end tells its clients which finals a finalize forced
        (``StreamOptions.mark_finalize``). ``chunk_seconds`` replaces the server's chunk on
        the simple route.

        Raises ``Overloaded`` or ``ShuttingDown`` (from ``Admission.admit``) when it is
        refused, ``InvalidFormat`` for a format past the input budget; a stream that is
        returned is counted until :meth:`end`.
        """
        stream_id = uuid.uuid4().hex
        turns = request.turn_detection is not None and self.turns is not None
        self.admission.admit(route, principal, stream_id, turns=turns)
        try:
            options = self.options(route, request)
            if chunk_seconds is not None:
                options = dataclasses.replace(options, chunk_seconds=chunk_seconds)
            if mark_finalize:
                options = dataclasses.replace(options, mark_finalize=True)
            if options.turns is not None and self.turns is not None:
                self.turns.start()  # loads the model once, on the first stream that asks
            pipeline = StreamPipeline(
                stream_id,
                options,
                backend=self.scheduler,
                emit=emit,
                vad=self.vad,
                turns=self.turns,
                observer=self.telemetry(route, stream_id, request.trace_id, connection),
                pressed=self.admission.pressed if self.admission.pressure is not None else None,
            )
        except BaseException:
            self.admission.stream_ended(route, "error", stream_id)
            raise
        pipeline.start()
        emit(
            Ready(
                session_id=stream_id,
                route=route.value,
                model=self.model.name,
                model_sample_rate=self.model.sample_rate,
                channels=options.fmt.channels,
                trace_id=pipeline.observer.traceparent,
                warnings=(TRACE_ID_IGNORED,) if pipeline.observer.trace_ignored else (),
            )
        )
        return pipeline

    async def end(
        self,
        route: Route,
        pipeline: StreamPipeline,
        *,
        flush: bool,
        outcome_if_dropped: str = "disconnected",
    ) -> None:
        """End a stream opened by :meth:`open` and count it out.

        With ``flush``, every result is sent and then ``done``; without (the client went
        away), its queued inferences are withdrawn at once. A flush that is interrupted
        (cancelled) withdraws what is left, so no work outlives the stream.
        """
        outcome = "error"
        try:
            if flush:
                try:
                    await pipeline.finish()
                except BaseException:
                    await pipeline.abort()
                    raise
                outcome = "completed"
            else:
                await pipeline.abort()
                outcome = outcome_if_dropped
        finally:
            self.admission.stream_ended(route, outcome, pipeline.stream_id)

    def telemetry(
        self,
        route: Route,
        stream_id: str,
        traceparent: str | None,
        connection: ConnectionTrace | None = None,
    ) -> StreamTelemetry:
        """Metrics and spans of a new stream, under the client's ``traceparent`` if valid.

        A trace id that is not a valid ``traceparent`` (in ``start`` or in the handshake)
        is ignored, and the telemetry says so (``trace_ignored``).
        """
        valid = parse_traceparent(traceparent)
        ignored = bool(traceparent) and valid is None
        if valid is None and connection is not None and connection.ignored_traceparent:
            ignored = True
        parent, links = self.tracing.stream_parent(valid, connection)
        return StreamTelemetry(
            stream_id,
            route.value,
            tracer=self.tracing.tracer,
            metrics=self.metrics,
            parent=parent,
            links=links,
            client_traceparent=valid,
            trace_ignored=ignored,
        )

    def options(self, route: Route, request: StartRequest) -> StreamOptions:
        """Resolve one stream's options from the request, within the server's bounds.

        Raises ``InvalidFormat`` for a format past the stream's input budget, and
        ``InvalidMessage`` for turn detection where there is none.
        """
        bounds = self.bounds
        fmt = request.format
        rate = fmt.channels * fmt.sample_rate
        if rate > bounds.max_samples_per_second:
            raise InvalidFormat(
                f"format: {fmt.channels} channels at {fmt.sample_rate} Hz is {rate} samples "
                f"per second, past this server's limit of {bounds.max_samples_per_second} "
                "(stream.max_samples_per_second)"
            )
        params = VadParams(interim_interval_s=bounds.interim_interval)
        overrides: dict[str, Any] = {}
        if request.vad is not None:
            overrides = request.vad.model_dump(exclude_none=True)
        if request.interim_interval is not None:
            overrides["interim_interval_s"] = request.interim_interval
        if overrides:
            params = clamp(replace(params, **overrides))
        params = replace(
            params, interim_interval_s=max(params.interim_interval_s, bounds.min_interim_interval)
        )
        turns: TurnSettings | None = None
        if not request.segments and request.turn_detection is None:
            raise InvalidMessage(
                "segments: false needs turn_detection (the stream would have no results)"
            )
        if request.turn_detection is not None:
            if route is not Route.SEGMENTED or self.turns is None:
                raise InvalidMessage(
                    "turn_detection: turn detection needs the segmented route "
                    "(/api/v1/segmented, gRPC's segmented streams, /v2/listen)"
                )
            detection = request.turn_detection
            turns = replace(
                self.turn_defaults,
                eot_threshold=detection.eot_threshold,
                eager_eot_threshold=detection.eager_eot_threshold,
                eot_timeout_ms=detection.eot_timeout_ms,
                min_end_silence_ms=detection.min_end_silence_ms,
            )
        return StreamOptions(
            route=route,
            fmt=request.format.to_audio_format(),
            model_rate=self.model.sample_rate,
            chunk_seconds=bounds.chunk_seconds,
            max_in_flight=bounds.max_in_flight,
            interim=request.interim_results,
            vad_params=params,
            words=request.word_times,
            turns=turns,
            segments=request.segments,
            max_lag=bounds.max_lag_seconds,
            speculate=bounds.speculative_finals,
            speculate_pad_ms=bounds.speculative_pad_ms,
        )
