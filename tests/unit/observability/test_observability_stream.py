"""One stream's telemetry: latency against arrival times, stage windows, spans."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from streamer.errors import ModelFailed
from streamer.events import SegmentResult, SpeechStarted, StreamError
from streamer.observability.logging import current_ids
from streamer.observability.metrics import Metrics
from streamer.observability.stream import ArrivalClock, StreamObserver, StreamTelemetry
from streamer.observability.tracing import Tracing
from streamer.testing import ManualClock


def segment(end: float, final: bool = True) -> SegmentResult:
    return SegmentResult(channel=0, start=0.0, end=end, final=final)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, name
    return found


def test_arrival_is_the_message_that_carried_the_point() -> None:
    clock = ArrivalClock()
    assert clock.arrival(0.1) is None
    for i in range(1, 6):
        clock.record(i * 0.1, float(i))
    assert clock.arrival(0.05) == 1.0
    assert clock.arrival(0.1) == 1.0  # a message's last sample arrived with it
    assert clock.arrival(0.1 + 1e-7) == 1.0  # event times are rounded to microseconds
    assert clock.arrival(0.1001) == 2.0
    assert clock.arrival(0.5) == 5.0
    assert clock.arrival(9.0) == 5.0  # past the end: the last message


def test_a_message_was_sent_once_whole_and_no_later_than_later_ones_allow() -> None:
    clock = ArrivalClock()
    clock.record(5.0, 100.0)  # five seconds in one message
    assert clock.carried_to(1.0) == 5.0
    assert clock.sent_by(1.0) == 100.0  # not 96: the message went once its audio was whole
    for i in range(1, 5):  # then half a second a message, all read at 110
        clock.record(5.0 + i * 0.5, 110.0)
    assert clock.carried_to(5.2) == 5.5
    assert clock.sent_by(5.2) == 108.5  # the last (to 7 s) arrived 1.5 s of audio later
    assert clock.sent_by(1.0) == 100.0
    assert clock.sent_by(7.5) is None and clock.carried_to(7.5) is None


def test_arrivals_older_than_the_horizon_are_forgotten() -> None:
    clock = ArrivalClock(horizon=1.0)
    for i in range(1, 31):
        clock.record(i * 0.1, float(i))
    assert clock.arrival(0.5) is None
    assert clock.arrival(2.5) == 25.0


def test_the_base_observer_changes_nothing() -> None:
    observer = StreamObserver()
    sent: list[object] = []
    emit = observer.watch(sent.append)
    emit(segment(1.0))
    observer.fed(0.1, 0.1, 0.0, 0.0)
    observer.ended("completed")
    assert sent == [segment(1.0)] and observer.traceparent is None


def make(
    clock: ManualClock, registry: CollectorRegistry, route: str = "segmented"
) -> StreamTelemetry:
    return StreamTelemetry(
        "s1", route, tracer=Tracing.from_env({}).tracer, metrics=Metrics(registry), clock=clock
    )


def test_latency_runs_from_the_arrival_of_the_results_last_audio() -> None:
    clock, registry = ManualClock(), CollectorRegistry()
    telemetry = make(clock, registry)
    sent: list[object] = []
    emit = telemetry.watch(sent.append)
    clock.now = 101.0
    telemetry.fed(1.0, 1.0, 0.001, 0.001)
    clock.now = 102.0
    telemetry.fed(1.0, 2.0, 0.001, 0.001)
    clock.now = 102.25
    emit(SpeechStarted(channel=0, time=0.5))  # the first result, 2.25 s after the start
    emit(segment(0.9, final=False))  # its audio arrived at 101.0
    clock.now = 102.5
    emit(segment(1.5))  # its audio arrived at 102.0
    assert len(sent) == 3
    route = {"route": "segmented"}
    assert value(registry, "streamer_time_to_first_result_seconds_sum", **route) == 2.25
    assert value(registry, "streamer_time_to_first_result_seconds_count", **route) == 1
    assert value(registry, "streamer_interim_latency_seconds_sum", **route) == 1.25
    assert value(registry, "streamer_final_latency_seconds_sum", **route) == 0.5
    assert value(registry, "streamer_final_latency_seconds_count", **route) == 1


def test_a_final_forced_by_stop_is_timed_from_the_stop() -> None:
    clock, registry = ManualClock(), CollectorRegistry()
    telemetry = make(clock, registry, route="simple")
    emit = telemetry.watch(lambda event: None)
    telemetry.fed(2.0, 2.0, 0.0, 0.0)
    clock.now = 105.0  # the client waits five seconds before its stop
    telemetry.flushed(2.0)
    clock.now = 105.2
    emit(segment(1.0))  # an earlier result, emitted late: timed from its audio
    emit(segment(2.0))  # the tail the stop forced out: timed from the stop
    route = {"route": "simple"}
    assert value(registry, "streamer_final_latency_seconds_sum", **route) == pytest.approx(5.4)
    assert value(registry, "streamer_final_latency_seconds_bucket", **route, le="0.3") == 1


def test_a_final_a_finalize_forced_is_timed_from_the_finalize_as_well() -> None:
    clock, registry = ManualClock(), CollectorRegistry()
    telemetry = make(clock, registry, route="segmented")
    emit = telemetry.watch(lambda event: None)
    telemetry.fed(2.0, 2.0, 0.0, 0.0)
    clock.now = 100.5
    telemetry.flushed(2.0)
    clock.now = 100.65
    emit(segment(1.0))  # a final the pause ended, not the finalize: not counted
    emit(SegmentResult(channel=0, start=1.0, end=2.0, forced=True))
    route = {"route": "segmented"}
    assert value(registry, "streamer_finalize_seconds_count", **route) == 1
    assert value(registry, "streamer_finalize_seconds_sum", **route) == pytest.approx(0.15)
    assert value(registry, "streamer_final_latency_seconds_count", **route) == 2


def test_decode_and_resample_are_observed_once_a_second_of_audio() -> None:
    clock, registry = ManualClock(), CollectorRegistry()
    telemetry = make(clock, registry)
    total = 0.0
    for _ in range(25):
        total += 0.1
        telemetry.fed(0.1, total, 0.0001, 0.0002)
    stage = {"stage": "decode"}
    assert value(registry, "streamer_stage_media_duration_seconds_count", **stage) == 2
    telemetry.ended("completed")
    assert value(registry, "streamer_stage_media_duration_seconds_count", **stage) == 3
    assert value(registry, "streamer_stage_media_duration_seconds_sum", **stage) == pytest.approx(
        2.5
    )
    assert value(
        registry, "streamer_stage_real_time_factor_sum", stage="resample"
    ) == pytest.approx(3 * 0.002)


def test_the_stream_logs_its_start_errors_and_end_with_its_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, tuple[str | None, str | None]]] = []

    class Ids(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), current_ids()))

    handler = Ids()
    logger = logging.getLogger("streamer.observability.stream")
    logger.addHandler(handler)
    telemetry = make(ManualClock(), CollectorRegistry())
    try:
        with caplog.at_level(logging.INFO):
            telemetry.started()
            telemetry.watch(lambda event: None)(StreamError(code="model_error", message="failed"))
            telemetry.ended("completed")
    finally:
        logger.removeHandler(handler)
    ids = ("s1", telemetry.trace_id)
    assert telemetry.trace_id is not None
    assert seen == [
        ("stream started", ids),
        ("error event model_error: failed", ids),
        ("stream ended", ids),
    ]
    assert current_ids() == (None, None)


async def test_spans_for_the_stream_its_inferences_and_its_windows() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env({}, exporters=[exporter])
    telemetry = StreamTelemetry("s1", "segmented", tracer=tracing.tracer)
    # The pipeline observes what it submitted, except an interim dropped on submission
    # (start 2.0 here), which never runs.
    ok, failed, superseded = (
        telemetry.inference(0, float(index), index + 1.0, index < 2) for index in (0, 1, 3)
    )
    assert ok is not None and failed is not None and superseded is not None
    ok(None, False)
    failed(ModelFailed("no"), False)
    superseded(None, True)
    total = 0.0
    for _ in range(25):
        total += 1.0
        telemetry.fed(1.0, total, 0.001, 0.001)
        telemetry.vad(31 * 512 / 16000, 0.002)
    telemetry.ended("completed")
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    tracing.shutdown()
    (stream,) = [s for s in spans if s.name == "streamer.stream"]
    assert stream.context is not None
    children = [s for s in spans if s.parent is not None]
    assert all(s.parent.span_id == stream.context.span_id for s in children)  # type: ignore[union-attr]
    inferences = [s for s in spans if s.name == "streamer.inference"]
    assert len(inferences) == 3  # the dropped interim never ran
    by_start = {s.attributes["streamer.start_time"]: s for s in inferences}  # type: ignore[index]
    assert by_start[1.0].attributes["streamer.error_code"] == "model_error"  # type: ignore[index]
    assert by_start[3.0].attributes["streamer.cancelled"] is True  # type: ignore[index]
    decode = [s for s in spans if s.name == "streamer.decode"]
    assert [s.attributes["streamer.operations"] for s in decode] == [10, 10, 5]  # type: ignore[index]
    vad = [s for s in spans if s.name == "streamer.vad"]
    assert len(vad) == 3 and sum(s.attributes["streamer.operations"] for s in vad) == 25  # type: ignore[index,misc]
