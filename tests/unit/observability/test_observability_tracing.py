"""Tracing set-up from the environment, and where a stream's span hangs."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamer.observability.stream import StreamTelemetry
from streamer.observability.tracing import (
    Tracing,
    exporters_from_env,
    extract_parent,
    format_traceparent,
    parse_traceparent,
)

CLIENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CLIENT_TRACE = int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
CLIENT_SPAN = int("00f067aa0ba902b7", 16)
HEADER_TRACE = int("0af7651916cd43dd8448eb211c80319c", 16)
HEADER_SPAN = int("b7ad6b7169203331", 16)


def names(environ: dict[str, str]) -> list[str]:
    exporters = exporters_from_env(environ)
    try:
        return [type(e).__name__ for e in exporters]
    finally:
        for exporter in exporters:
            exporter.shutdown()


def test_nothing_is_exported_unless_asked_for() -> None:
    assert names({}) == []
    assert names({"OTEL_SERVICE_NAME": "x"}) == []


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_an_endpoint_or_the_exporter_name_asks_for_otlp(environ: dict[str, str]) -> None:
    assert names(environ) == ["OTLPSpanExporter"]


@pytest.mark.parametrize(
    ("variable", "protocol", "module"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "grpc"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "http"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf", "http"),
    ],
)
def test_the_protocol_variables_choose_grpc_or_http(
    variable: str, protocol: str, module: str
) -> None:
    [exporter] = exporters_from_env({"OTEL_TRACES_EXPORTER": "otlp", variable: protocol})
    try:
        assert type(exporter).__module__.split(".")[-2] == module
    finally:
        exporter.shutdown()


def test_none_wins_and_console_is_supported() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}
    assert names(environ) == []
    assert names({"OTEL_TRACES_EXPORTER": "console"}) == ["ConsoleSpanExporter"]


def test_an_unknown_exporter_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert names({"OTEL_TRACES_EXPORTER": "zipkin"}) == []
    assert "zipkin" in caplog.text


def test_the_sdk_can_be_disabled() -> None:
    tracing = Tracing.from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled
    assert isinstance(tracing.tracer, trace.NoOpTracer)


def test_unexported_spans_still_get_ids_and_are_not_recorded() -> None:
    tracing = Tracing.from_env({})
    try:
        span = tracing.tracer.start_span("x")
        child = tracing.tracer.start_span("y", context=extract_parent(CLIENT))
        assert span.get_span_context().is_valid and not span.is_recording()
        assert child.get_span_context().trace_id == CLIENT_TRACE
        assert not child.is_recording()
        span.end()
        child.end()
    finally:
        tracing.shutdown()


def test_exported_spans_are_recorded() -> None:
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    try:
        span = tracing.tracer.start_span("x")
        assert span.get_span_context().is_valid and span.is_recording()
        span.end()
    finally:
        tracing.shutdown()


def test_a_traceparent_becomes_a_remote_parent() -> None:
    context = extract_parent(CLIENT)
    assert context is not None
    parent = trace.get_current_span(context).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.is_remote) == (CLIENT_TRACE, CLIENT_SPAN, True)
    assert format_traceparent(parent) == CLIENT


@pytest.mark.parametrize(
    "value", ["", "t-1", "00-0000000000000000000000000000000-00f067aa0ba902b7-01", "garbage-"]
)
def test_an_invalid_traceparent_is_no_parent(value: str) -> None:
    assert extract_parent(value) is None


def test_the_start_message_wins_over_the_headers_and_headers_fill_in() -> None:
    headers = {"traceparent": HEADER, "tracestate": "vendor=1"}

    def trace_of(traceparent: str | None) -> int:
        context = extract_parent(traceparent, headers)
        assert context is not None
        return trace.get_current_span(context).get_span_context().trace_id

    assert trace_of(CLIENT) == CLIENT_TRACE
    assert trace_of(None) == HEADER_TRACE
    assert trace_of("not-a-traceparent") == HEADER_TRACE


class Recorder:
    """Tracing with an in-memory exporter."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracing = Tracing.from_env({}, exporters=[self.exporter])

    def spans(self) -> dict[str, ReadableSpan]:
        self.tracing.force_flush()
        return {span.name: span for span in self.exporter.get_finished_spans()}

    def close(self) -> None:
        self.tracing.shutdown()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def stream(recorder: Recorder, traceparent: str | None, headers: dict[str, str]) -> StreamTelemetry:
    connection = recorder.tracing.connection("simple", headers)
    parent, links = recorder.tracing.stream_parent(traceparent, connection)
    telemetry = StreamTelemetry(
        "s1", "simple", tracer=recorder.tracing.tracer, parent=parent, links=links
    )
    telemetry.ended("completed")
    connection.end(1000)
    return telemetry


def test_a_stream_hangs_under_the_span_its_client_named(recorder: Recorder) -> None:
    telemetry = stream(recorder, CLIENT, {})
    spans = recorder.spans()
    recorder.close()
    span, connection = spans["streamer.stream"], spans["streamer.connection"]
    assert span.context is not None and span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert [link.context.span_id for link in span.links] == [connection.context.span_id]  # type: ignore[union-attr]
    assert telemetry.traceparent == format_traceparent(span.context)
    assert telemetry.trace_id == f"{CLIENT_TRACE:032x}"
    assert span.attributes is not None and span.attributes["streamer.outcome"] == "completed"


def test_without_a_start_traceparent_the_handshake_header_is_the_parent(
    recorder: Recorder,
) -> None:
    stream(recorder, None, {"traceparent": HEADER})
    spans = recorder.spans()
    recorder.close()
    for name in ("streamer.stream", "streamer.connection"):
        span = spans[name]
        assert span.parent is not None and span.context is not None
        assert (span.context.trace_id, span.parent.span_id) == (HEADER_TRACE, HEADER_SPAN)


def test_a_stream_without_any_traceparent_is_a_child_of_its_connection(
    recorder: Recorder,
) -> None:
    stream(recorder, "t-1", {})
    spans = recorder.spans()
    recorder.close()
    span, connection = spans["streamer.stream"], spans["streamer.connection"]
    assert connection.parent is None
    assert span.parent is not None and connection.context is not None
    assert span.parent.span_id == connection.context.span_id
    assert not span.links


def test_with_the_sdk_disabled_a_stream_carries_its_clients_trace() -> None:
    tracing = Tracing.from_env({"OTEL_SDK_DISABLED": "true"})
    parent, links = tracing.stream_parent(CLIENT, None)
    telemetry = StreamTelemetry("s1", "simple", tracer=tracing.tracer, parent=parent, links=links)
    assert telemetry.traceparent == CLIENT
    own = StreamTelemetry("s2", "simple", tracer=tracing.tracer, client_traceparent=CLIENT)
    assert own.traceparent == CLIENT and own.trace_id is None
    # Nothing but a valid traceparent is ever echoed.
    junk = StreamTelemetry("s3", "simple", tracer=tracing.tracer, client_traceparent="t-1")
    assert junk.traceparent is None and junk.trace_id is None


@settings(deadline=None)  # a busy test machine is no reason to fail
@given(st.text(max_size=80))
def test_only_a_valid_traceparent_is_ever_taken(value: str) -> None:
    parsed = parse_traceparent(value)
    assert parsed is None or (
        len(parsed) == 55 and re.fullmatch(r"[0-9a-f]{2}(-[0-9a-f]+){3}", parsed)
    )


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        (CLIENT, CLIENT),
        (f"  {CLIENT}\t", CLIENT),
        (CLIENT.upper(), None),
        (CLIENT + "-00", None),
        ("ff" + CLIENT[2:], None),
        (CLIENT[:3] + "0" * 32 + CLIENT[35:], None),
        (CLIENT[:36] + "0" * 16 + CLIENT[52:], None),
        ("x" * 1_000_000, None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(value: str | None, taken: str | None) -> None:
    assert parse_traceparent(value) == taken


def test_a_connection_remembers_an_ignored_header() -> None:
    tracing = Tracing()
    assert tracing.connection("simple", {"traceparent": "junk"}).ignored_traceparent
    assert not tracing.connection("simple", {"traceparent": CLIENT}).ignored_traceparent
    assert not tracing.connection("simple", {}).ignored_traceparent
