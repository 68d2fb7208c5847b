"""What every transport does to open and end one stream, so that none of them can drift.

The connection driver parses nothing here: it hands over the ``StartRequest`` the machine
accepted, and gets back a running pipeline that was counted in, or the ``ClientError`` that
refused it.
"""

from __future__ import annotations

import dataclasses
import uuid

from streamer.events import Ready
from streamer.observability.tracing import TRACE_ID_IGNORED, ConnectionTrace
from streamer.pipeline import Emit, Route, StreamPipeline
from streamer.policy import ANONYMOUS, Principal
from streamer.protocol.messages import StartRequest
from streamer.services import Services


def open_stream(
    services: Services,
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
    (``StreamOptions.mark_finalize``).

    Raises ``Overloaded`` or ``ShuttingDown`` (from ``Services.admit``) when it is refused;
    a stream that is returned is counted until :func:`end_stream`. ``chunk_seconds``
    replaces the server's chunk on the simple route.
    """
    stream_id = uuid.uuid4().hex
    services.admit(route, principal, stream_id)
    try:
        options = services.stream_options(route, request)
        if chunk_seconds is not None:
            options = dataclasses.replace(options, chunk_seconds=chunk_seconds)
        if mark_finalize:
            options = dataclasses.replace(options, mark_finalize=True)
        if options.turns is not None and services.turns is not None:
            services.turns.start()  # loads the model on the first stream that needs it
        pipeline = StreamPipeline(
            stream_id,
            options,
            scheduler=services.scheduler,
            emit=emit,
            vad=services.vad,
            turns=services.turns,
            observer=services.stream_telemetry(route, stream_id, request.trace_id, connection),
        )
    except BaseException:
        services.stream_ended(route, "error", stream_id)
        raise
    pipeline.start()
    emit(
        Ready(
            session_id=stream_id,
            route=route.value,
            model=services.model.name,
            model_sample_rate=services.model.sample_rate,
            channels=options.fmt.channels,
            trace_id=pipeline.observer.traceparent,
            warnings=(TRACE_ID_IGNORED,) if pipeline.observer.trace_ignored else (),
        )
    )
    return pipeline


async def end_stream(
    services: Services,
    route: Route,
    pipeline: StreamPipeline,
    *,
    flush: bool,
    outcome_if_dropped: str = "disconnected",
) -> None:
    """End a stream opened by :func:`open_stream` and count it out.

    With ``flush``, every result is sent and then ``done``; without (the client went away),
    its queued inferences are withdrawn at once. A flush that is interrupted (cancelled)
    withdraws what is left, so no work outlives the stream.
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
        services.stream_ended(route, outcome, pipeline.stream_id)
