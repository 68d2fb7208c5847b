"""Hostile ``start`` messages on a real server, over the WebSocket and gRPC.

Every numeric field with a value that is not finite, negative or absurdly large is refused
with a typed error naming the field, and the connection (or channel) serves a good stream
right after; a format past the input budget is refused naming the limit; a trace id that
is not a valid W3C traceparent is ignored, said so in ``ready``, and never echoed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from conftest import ServerProcess, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from streamer.codecs.v1_proto import event_to_dict
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

FORMAT: dict[str, Any] = {"channels": 1, "sample_rate": 16000, "bit_depth": 16}
NUMERIC_FIELDS = [
    "interim_interval",
    "vad.threshold",
    "vad.min_speech_ms",
    "vad.min_silence_ms",
    "vad.speech_pad_ms",
    "vad.max_segment_s",
    "format.channels",
    "format.sample_rate",
    "format.bit_depth",
]
HOSTILE_JSON = [
    "Infinity",
    "-Infinity",
    "NaN",
    "1e999999",
    "-1e999999",
    "-1",
    "-0.5",
    "1e300",
    "1e20",
    "123456789012345678901234567890",
]
"""JSON number literals (and the non-standard ones Python and JavaScript write)."""
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT_FORM = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
AUDIO = b"\x00\x00" * 1600  # 0.1 s of 16 kHz silence


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(tmp_path_factory.mktemp("hostile"), grpc=True)
    yield running
    running.stop()


def expected_code(field: str) -> str:
    return "invalid_format" if field.startswith("format.") else "invalid_message"


def start_text(field: str, literal: str) -> str:
    """A ``start`` whose ``field`` holds ``literal``, written into the JSON text as it is."""
    start: dict[str, Any] = {"request": "start", "format": dict(FORMAT)}
    section, _, name = field.rpartition(".")
    target = start.setdefault(section, {}) if section else start
    target[name] = "@HOSTILE@"
    return json.dumps(start).replace('"@HOSTILE@"', literal)


def receive(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return event


def good_stream(ws: ClientConnection, start: dict[str, Any] | None = None) -> dict[str, Any]:
    """A short stream on an open connection: its ``ready``, after checking it reaches done."""
    ws.send(json.dumps(start or {"request": "start", "format": FORMAT}))
    ready = receive(ws)
    assert ready["type"] == "ready", ready
    ws.send(AUDIO)
    ws.send(json.dumps({"request": "stop"}))
    kinds = []
    while (event := receive(ws))["type"] != "done":
        kinds.append(event["type"])
    assert "error" not in kinds
    return ready


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(NUMERIC_FIELDS), literal=st.sampled_from(HOSTILE_JSON))
def test_a_hostile_number_over_the_websocket_is_refused_naming_its_field(
    server: ServerProcess, field: str, literal: str
) -> None:
    with connect(server.ws("segmented"), compression=None) as ws:
        ws.send(start_text(field, literal))
        error = receive(ws)
        assert error["type"] == "error", error
        assert error["code"] == expected_code(field), error
        assert field in error["message"], error
        good_stream(ws)  # the connection goes on: the server neither crashed nor closed it


@pytest.mark.parametrize("route", ["simple", "segmented"])
def test_every_hostile_number_is_refused_on_both_routes(server: ServerProcess, route: str) -> None:
    with connect(server.ws(route), compression=None) as ws:
        for field in NUMERIC_FIELDS:
            for literal in HOSTILE_JSON:
                ws.send(start_text(field, literal))
                error = receive(ws)
                assert (error["type"], error["code"]) == ("error", expected_code(field))
                assert field in error["message"], (field, literal, error)
        good_stream(ws)
    assert "Traceback" not in server.output()


# gRPC: the config is validated by the same models.

GRPC_FLOATS = [float("inf"), float("-inf"), float("nan"), float("1e999999"), -1.0, 1e300, 1e20]
GRPC_INTS = [-1, -(2**31), 2**31 - 1]
GRPC_UINTS = [0, 2**32 - 1, 2**31]


def grpc_case(draw: st.DrawFn) -> tuple[str, pb.StreamConfig]:
    config = pb.StreamConfig(format=pb.AudioFormat(**FORMAT))
    field = draw(st.sampled_from(NUMERIC_FIELDS))
    section, _, name = field.rpartition(".")
    if field == "interim_interval":
        config.interim_interval = draw(st.sampled_from(GRPC_FLOATS))
    elif section == "vad":
        is_float = name in ("threshold", "max_segment_s")
        value = draw(st.sampled_from(GRPC_FLOATS if is_float else GRPC_INTS))
        setattr(config.vad, name, value)
    else:
        setattr(config.format, name, draw(st.sampled_from(GRPC_UINTS)))
    return field, config


def grpc_refusal(target: str, config: pb.StreamConfig) -> tuple[grpc.StatusCode, str, str]:
    """Send one config; the call's status, its error code and its details."""
    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.StreamerStub(channel).Segmented(iter([pb.StreamRequest(config=config)]))
        with pytest.raises(grpc.RpcError) as raised:
            for _ in call:
                pass
        error = raised.value
        trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
        return error.code(), trailing.get("streamer-error-code", ""), error.details()  # type: ignore[attr-defined]


def grpc_good_stream(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """A short stream over gRPC; its ``ready`` event, after checking it reaches done."""
    requests = [
        pb.StreamRequest(config=pb.StreamConfig(format=pb.AudioFormat(**FORMAT))),
        pb.StreamRequest(audio=AUDIO),
        pb.StreamRequest(stop=pb.Stop()),
    ]
    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.StreamerStub(channel).Segmented(iter(requests), metadata=metadata)
        events = [event_to_dict(message) for message in call]
    kinds = [e["type"] for e in events if e is not None]
    assert kinds[0] == "ready" and kinds[-1] == "done" and "error" not in kinds, events
    ready = events[0]
    assert ready is not None
    return ready


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=st.composite(grpc_case)())
def test_a_hostile_number_over_grpc_is_refused_naming_its_field(
    server: ServerProcess, case: tuple[str, pb.StreamConfig]
) -> None:
    field, config = case
    status, code, details = grpc_refusal(server.grpc_target, config)
    assert status is grpc.StatusCode.INVALID_ARGUMENT
    assert code == expected_code(field)
    assert field in details, details
    grpc_good_stream(server.grpc_target)


# The input budget.


@pytest.mark.parametrize(
    ("channels", "rate", "bit_depth", "is_float"),
    [(32, 192000, 64, True), (3, 96000, 16, False), (16, 16000, 16, False)],
)
def test_a_format_past_the_input_budget_is_refused_naming_the_limit(
    server: ServerProcess, channels: int, rate: int, bit_depth: int, is_float: bool
) -> None:
    fmt = {"channels": channels, "sample_rate": rate, "bit_depth": bit_depth, "is_float": is_float}
    with connect(server.ws("simple"), compression=None) as ws:
        ws.send(json.dumps({"request": "start", "format": fmt}))
        error = receive(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_format"), error
        assert "stream.max_samples_per_second" in error["message"]
        assert "192000" in error["message"]
        good_stream(ws)
    config = pb.StreamConfig(format=pb.AudioFormat(**fmt))
    status, code, details = grpc_refusal(server.grpc_target, config)
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_format")
    assert "stream.max_samples_per_second" in details


@pytest.mark.parametrize(("channels", "rate"), [(2, 48000), (8, 16000), (2, 96000)])
def test_formats_within_the_default_budget_are_served(
    server: ServerProcess, channels: int, rate: int
) -> None:
    fmt = {"channels": channels, "sample_rate": rate, "bit_depth": 16}
    with connect(server.ws("segmented"), compression=None) as ws:
        ready = good_stream(ws, {"request": "start", "format": fmt})
    assert ready["channels"] == channels


def test_the_budget_is_a_setting(launch: Any) -> None:
    srv = launch(env={"STREAMER_STREAM__MAX_SAMPLES_PER_SECOND": "16000"})
    with connect(srv.ws("simple"), compression=None) as ws:
        ws.send(json.dumps({"request": "start", "format": {**FORMAT, "channels": 2}}))
        error = receive(ws)
        assert error["code"] == "invalid_format" and "16000" in error["message"]
        good_stream(ws)


# Trace ids.

HOSTILE_TRACE_IDS = [
    "x" * 60_000,  # as long as a text frame may be (server.max_text_bytes)
    TRACEPARENT.upper(),
    TRACEPARENT + "-00",
    " " + TRACEPARENT[:-1],
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u0661",
    "<script>alert(1)</script>",
]


@pytest.fixture(scope="module")
def untraced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the OpenTelemetry SDK off: a valid client trace id is echoed as is."""
    running = start_server(
        tmp_path_factory.mktemp("untraced"), env={"OTEL_SDK_DISABLED": "true"}, grpc=True
    )
    yield running
    running.stop()


@pytest.mark.parametrize("sdk", ["on", "off"])
def test_a_hostile_trace_id_is_ignored_and_said_so(
    server: ServerProcess, untraced: ServerProcess, sdk: str
) -> None:
    srv = server if sdk == "on" else untraced
    with connect(srv.ws("simple"), compression=None, max_size=None) as ws:
        for trace_id in HOSTILE_TRACE_IDS:
            ready = good_stream(ws, {"request": "start", "format": FORMAT, "trace_id": trace_id})
            assert len(json.dumps(ready)) < 1000  # nothing of the client's string came back
            [warning] = ready["warnings"]
            assert "trace_id ignored" in warning
            if sdk == "on":  # a new trace of the server's own
                assert TRACEPARENT_FORM.fullmatch(ready["trace_id"])
                assert ready["trace_id"][3:35] != TRACEPARENT[3:35]
            else:
                assert "trace_id" not in ready
        # A valid one is taken, without a warning.
        ready = good_stream(ws, {"request": "start", "format": FORMAT, "trace_id": TRACEPARENT})
        assert "warnings" not in ready
        assert ready["trace_id"][3:35] == TRACEPARENT[3:35]
        if sdk == "off":
            assert ready["trace_id"] == TRACEPARENT


def test_a_hostile_traceparent_header_is_ignored_and_said_so(server: ServerProcess) -> None:
    headers = {"traceparent": "00-" + "g" * 32 + "-00f067aa0ba902b7-01"}
    with connect(server.ws("simple"), compression=None, additional_headers=headers) as ws:
        ready = good_stream(ws)
    assert "trace_id ignored" in ready["warnings"][0]
    assert TRACEPARENT_FORM.fullmatch(ready["trace_id"])
    headers = {"traceparent": TRACEPARENT}
    with connect(server.ws("simple"), compression=None, additional_headers=headers) as ws:
        ready = good_stream(ws)
    assert "warnings" not in ready and ready["trace_id"][3:35] == TRACEPARENT[3:35]


def test_hostile_grpc_trace_metadata_is_never_echoed(untraced: ServerProcess) -> None:
    for trace_id in ("x" * 4000, TRACEPARENT.upper()):
        ready = grpc_good_stream(untraced.grpc_target, (("traceparent", trace_id),))
        assert not ready.get("trace_id")
    ready = grpc_good_stream(untraced.grpc_target, (("traceparent", TRACEPARENT),))
    assert ready["trace_id"] == TRACEPARENT


def test_a_trace_id_in_start_is_checked_on_grpc_too(untraced: ServerProcess) -> None:
    config = pb.StreamConfig(format=pb.AudioFormat(**FORMAT), trace_id="y" * 100_000)
    requests = [pb.StreamRequest(config=config), pb.StreamRequest(stop=pb.Stop())]
    with grpc.insecure_channel(untraced.grpc_target) as channel:
        events = [event_to_dict(m) for m in pb_grpc.StreamerStub(channel).Simple(iter(requests))]
    assert events[0] is not None and events[0]["type"] == "ready"
    assert not events[0].get("trace_id")
