"""The protobuf forms of protocol v1 say exactly what the WebSocket's JSON says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.codecs.v1_json import encode_event, event_from_dict
from streamer.codecs.v1_proto import (
    config_to_start,
    decode_request,
    event_to_dict,
    event_to_proto,
    start_to_config,
)
from streamer.errors import ClientError, InvalidFormat, InvalidMessage
from streamer.events import (
    Done,
    Event,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
    Turn,
    TurnWord,
)
from streamer.protocol.actions import EmitError
from streamer.protocol.connection import ConnectionMachine
from streamer.protocol.messages import StartRequest, TurnEventModel, parse_client_message
from streamer.protocol.proto import streamer_v1_pb2 as pb

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def parsed(config: pb.StreamConfig, traceparent: str | None = None) -> StartRequest:
    """The config as the codec decodes it, which is the same as its JSON ``start``."""
    as_json = parse_client_message(json.dumps(config_to_start(config, traceparent)))
    direct = decode_request(pb.StreamRequest(config=config), traceparent)
    assert isinstance(direct, StartRequest)
    assert direct == as_json
    return direct


def refusal(config: pb.StreamConfig) -> ClientError:
    """The error the codec raises for a config, the same as its JSON ``start`` gets."""
    with pytest.raises(ClientError) as direct:
        decode_request(pb.StreamRequest(config=config))
    with pytest.raises(ClientError) as as_json:
        parse_client_message(json.dumps(config_to_start(config)))
    assert (direct.value.code, direct.value.message) == (as_json.value.code, as_json.value.message)
    return direct.value


# Config -> start.


def test_a_full_config_is_the_same_start_as_its_json() -> None:
    config = pb.StreamConfig(
        format=pb.AudioFormat(
            channels=2, sample_rate=8000, bit_depth=8, encoding=pb.ENCODING_MULAW
        ),
        interim_results=True,
        interim_interval=0.25,
        vad=pb.VadOptions(threshold=0.6, min_silence_ms=300),
        trace_id=TRACEPARENT,
    )
    ws = parse_client_message(
        json.dumps(
            {
                "request": "start",
                "format": {
                    "channels": 2,
                    "sample_rate": 8000,
                    "bit_depth": 8,
                    "is_float": False,
                    "encoding": "mulaw",
                },
                "interim_results": True,
                "interim_interval": 0.25,
                "vad": {"threshold": 0.6, "min_silence_ms": 300},
                "trace_id": TRACEPARENT,
            }
        )
    )
    assert parsed(config) == ws


def test_unset_fields_take_the_servers_defaults() -> None:
    config = pb.StreamConfig(format=pb.AudioFormat(channels=1, sample_rate=16000, bit_depth=16))
    start = config_to_start(config)
    assert start == {
        "request": "start",
        "interim_results": False,
        "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False},
    }
    request = parsed(config)
    assert request.vad is None and request.interim_interval is None and request.trace_id is None


def test_an_empty_vad_message_is_an_empty_vad_object() -> None:
    config = pb.StreamConfig(
        format=pb.AudioFormat(channels=1, sample_rate=16000, bit_depth=16), vad=pb.VadOptions()
    )
    assert config_to_start(config)["vad"] == {}


def test_a_config_without_format_is_refused_naming_the_field() -> None:
    error = refusal(pb.StreamConfig())
    assert isinstance(error, InvalidMessage) and "missing field 'format'" in error.message


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (pb.AudioFormat(channels=0, sample_rate=16000, bit_depth=16), "channels"),
        (pb.AudioFormat(channels=1, sample_rate=100, bit_depth=16), "sample_rate"),
        (pb.AudioFormat(channels=1, sample_rate=16000, bit_depth=12), "bit_depth"),
        (pb.AudioFormat(channels=1, sample_rate=16000, bit_depth=16, encoding=7), "encoding"),  # type: ignore[arg-type]
    ],
)
def test_an_invalid_format_is_invalid_format(fmt: pb.AudioFormat, field: str) -> None:
    config = pb.StreamConfig(format=fmt)
    try:
        request = parsed(config)
    except InvalidFormat:  # refused by the schema, as its JSON would be
        error = refusal(config)
        code, message = error.code, error.message
    else:  # refused by the connection, as its JSON would be
        [action] = ConnectionMachine().receive(request)
        assert isinstance(action, EmitError)
        code, message = action.code, action.message
    assert code == "invalid_format" and field in message


def test_the_config_traceparent_wins_over_the_metadata() -> None:
    fmt = pb.AudioFormat(channels=1, sample_rate=16000, bit_depth=16)
    assert parsed(pb.StreamConfig(format=fmt), TRACEPARENT).trace_id == TRACEPARENT
    with_own = pb.StreamConfig(format=fmt, trace_id=OTHER_TRACEPARENT)
    assert parsed(with_own, TRACEPARENT).trace_id == OTHER_TRACEPARENT


# Start -> config (the client's direction).

_formats = st.fixed_dictionaries(
    {
        "channels": st.integers(1, 32),
        "sample_rate": st.integers(8000, 192000),
        "bit_depth": st.sampled_from([8, 16, 24, 32, 64]),
        "is_float": st.booleans(),
    },
    optional={"encoding": st.sampled_from(["pcm", "mulaw", "alaw"])},
)
_vads = st.fixed_dictionaries(
    {},
    optional={
        "threshold": st.floats(0, 1),
        "min_speech_ms": st.integers(0, 10_000),
        "min_silence_ms": st.integers(0, 10_000),
        "speech_pad_ms": st.integers(0, 10_000),
        "max_segment_s": st.floats(1, 60),
    },
)
_turns = st.fixed_dictionaries(
    {},
    optional={
        "eot_threshold": st.floats(0.5, 0.9),
        "eager_eot_threshold": st.floats(0.3, 0.5),
        "eot_timeout_ms": st.integers(500, 10_000),
    },
)
_starts = st.fixed_dictionaries(
    {"request": st.just("start"), "format": _formats, "interim_results": st.booleans()},
    optional={
        "interim_interval": st.floats(0.05, 10),
        "vad": _vads,
        "trace_id": st.just(TRACEPARENT),
        "word_times": st.just(True),  # false is the default, which the config leaves out
        "turn_detection": _turns,
        "segments": st.booleans(),
    },
)


@settings(deadline=None)  # a busy test machine is no reason to fail
@given(_starts)
def test_a_start_survives_the_trip_through_protobuf(start: dict[str, Any]) -> None:
    config = pb.StreamConfig.FromString(start_to_config(start).SerializeToString())
    assert config_to_start(config) == start


def test_a_start_field_the_config_lacks_is_an_error() -> None:
    with pytest.raises(ValueError, match="'speed'"):
        start_to_config({"request": "start", "speed": 2})
    with pytest.raises(ValueError, match="'endianness'"):
        start_to_config({"format": {"channels": 1, "endianness": "big"}})


# Events.

EVENTS: list[Event] = [
    Ready(session_id="abc", route="simple", model="test", model_sample_rate=16000, channels=2),
    Ready(
        session_id="abc",
        route="segmented",
        model="test",
        model_sample_rate=16000,
        channels=1,
        trace_id=TRACEPARENT,
        warnings=("the trace id was ignored",),
    ),
    SegmentResult(1, 0.5, 1.75, False, {"count": 20000}),
    SegmentResult(0, 0.0, 1.0, True, {}),
    SpeechStarted(channel=0, time=0.152),
    SpeechEnded(channel=3, time=2.31),
    StreamError(code="invalid_format", message="bad"),
    StreamError(code="model_error", message="failed", channel=0, start=0.0, end=1.0),
    StreamError(code="model_error", message="failed", channel=0, start=0.0, end=0.0),
    StreamError(code="worker_crashed", message="died", channel=1, start=0, end=1, retryable=True),
    Done(audio_seconds=11.0),
    Done(audio_seconds=0.0),
    Turn(0, "StartOfTurn", 0, "", (), 0.352, 0.352, 0.0),
    Turn(
        1,
        "EndOfTurn",
        3,
        "Ask not.",
        (TurnWord("Ask", 0.9, 3.3, 3.6), TurnWord("not.", 0.75, 3.6, 4.0)),
        3.296,
        4.1,
        0.96,
        "model",
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_an_event_is_its_own_websocket_json_read_back(event: Event) -> None:
    """The v1 JSON of an event, read back, is the event; and a turn event is what the
    protocol's schema says."""
    body = json.loads(encode_event(event))
    assert event_from_dict(body) == event
    if isinstance(event, Turn):
        TurnEventModel.model_validate(body)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_an_event_reads_back_as_its_websocket_json(event: Event) -> None:
    wire = pb.StreamEvent.FromString(event_to_proto(event).SerializeToString())
    ws = json.loads(encode_event(event))
    back = event_to_dict(wire)
    assert back == ws
    assert back is not None and list(back) == list(ws)  # and in the same order


_json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_outputs = st.dictionaries(
    st.text(min_size=1, max_size=12).filter(
        lambda k: k not in {"type", "channel", "start_time", "end_time", "is_final"}
    ),
    _json,
    max_size=5,
)


@settings(deadline=None)  # a busy test machine is no reason to fail
@given(_outputs)
def test_any_model_output_reads_back_as_its_websocket_json(output: dict[str, Any]) -> None:
    event = SegmentResult(0, 0.0, 1.0, True, output)
    wire = pb.StreamEvent.FromString(event_to_proto(event).SerializeToString())
    # Numbers compare by value: a whole float comes back as an int (2.0 == 2).
    assert event_to_dict(wire) == json.loads(encode_event(event))


def test_whole_numbers_in_outputs_come_back_as_integers() -> None:
    event = SegmentResult(0, 0.0, 1.0, True, {"count": 16000, "words": [{"n": 3}], "p": 0.5})
    back = event_to_dict(event_to_proto(event))
    assert back is not None
    assert type(back["count"]) is int and type(back["words"][0]["n"]) is int
    assert back["p"] == 0.5


def test_an_event_this_client_does_not_know_is_none() -> None:
    assert event_to_dict(pb.StreamEvent()) is None
