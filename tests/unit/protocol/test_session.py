"""The protocol state machine over every order of messages."""

from __future__ import annotations

import itertools
import json

import pytest

from streamer.errors import (
    AlreadyStarted,
    ClientError,
    InvalidFormat,
    InvalidJson,
    InvalidMessage,
    NotStarted,
)
from streamer.protocol.session import Session, State

START = json.dumps(
    {"request": "start", "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16}}
)
STOP = json.dumps({"request": "stop"})
STOP_CLOSE = json.dumps({"request": "stop", "disconnect": True})
FINALIZE = json.dumps({"request": "finalize"})
KEEPALIVE = json.dumps({"request": "keepalive"})
AUDIO = b"\x00\x01"

MESSAGES: dict[str, str | bytes] = {
    "start": START,
    "stop": STOP,
    "stop_close": STOP_CLOSE,
    "finalize": FINALIZE,
    "keepalive": KEEPALIVE,
    "audio": AUDIO,
}


def feed(session: Session, msg: str | bytes) -> None:
    if isinstance(msg, bytes):
        session.receive_bytes(msg)
    else:
        session.receive_text(msg)


def expected(state: State, name: str) -> tuple[State, type[ClientError] | None]:
    """The reference model the session must follow."""
    if state is State.CLOSED:
        return state, InvalidMessage
    if state is State.IDLE:
        if name == "start":
            return State.STREAMING, None
        if name == "keepalive":
            return State.IDLE, None
        return State.IDLE, NotStarted
    if name == "start":
        return State.STREAMING, AlreadyStarted
    if name == "stop":
        return State.IDLE, None
    if name == "stop_close":
        return State.CLOSED, None
    return State.STREAMING, None


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_every_sequence_follows_the_reference_model(length: int) -> None:
    for seq in itertools.product(MESSAGES, repeat=length):
        session = Session()
        state = State.IDLE
        for name in seq:
            state_after, error = expected(state, name)
            if error is None:
                feed(session, MESSAGES[name])
            else:
                with pytest.raises(error):
                    feed(session, MESSAGES[name])
            state = state_after
            assert session.state is state, seq


def test_errors_name_what_was_expected() -> None:
    session = Session()
    with pytest.raises(NotStarted, match="expected a 'start' request"):
        session.receive_bytes(AUDIO)
    session.receive_text(START)
    with pytest.raises(AlreadyStarted, match="expected audio, 'finalize' or 'stop'"):
        session.receive_text(START)


@pytest.mark.parametrize(
    ("text", "error", "needle"),
    [
        ("{not json", InvalidJson, "JSON"),
        ("[1, 2]", InvalidMessage, "JSON object"),
        ('"start"', InvalidMessage, "JSON object"),
        ("null", InvalidMessage, "JSON object"),
        ("{}", InvalidMessage, "request"),
        ('{"request": "rewind"}', InvalidMessage, "rewind"),
        ('{"request": "stop", "hurry": true}', InvalidMessage, "hurry"),
        ('{"request": "stop", "disconnect": "maybe"}', InvalidMessage, "disconnect"),
        ('{"request": "start"}', InvalidMessage, "format"),
        (
            '{"request": "start", "format": {"channels": 1, "sample_rate": 16000,'
            ' "bit_depth": 16}, "colour": "red"}',
            InvalidMessage,
            "colour",
        ),
        (
            '{"request": "start", "format": {"channels": 1, "sample_rate": 16000,'
            ' "bit_depth": 16, "endian": "big"}}',
            InvalidFormat,
            "endian",
        ),
    ],
)
def test_malformed_messages_get_typed_errors(
    text: str, error: type[ClientError], needle: str
) -> None:
    session = Session()
    with pytest.raises(error) as info:
        session.receive_text(text)
    assert needle in info.value.message
    assert session.state is State.IDLE


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        ({"channels": 0, "sample_rate": 16000, "bit_depth": 16}, "channels"),
        ({"channels": 1000, "sample_rate": 16000, "bit_depth": 16}, "channels"),
        ({"channels": 1, "sample_rate": 7999, "bit_depth": 16}, "sample_rate"),
        ({"channels": 1, "sample_rate": 192001, "bit_depth": 16}, "sample_rate"),
        ({"channels": 1, "sample_rate": 16000, "bit_depth": 12}, "bit_depth"),
        ({"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": True}, "bit_depth"),
        ({"channels": 1, "sample_rate": 8000, "bit_depth": 16, "encoding": "mulaw"}, "bit_depth"),
        ({"channels": 1, "sample_rate": 8000, "bit_depth": 8, "encoding": "mp3"}, "encoding"),
        ({"channels": True, "sample_rate": 16000, "bit_depth": 16}, "channels"),
        ({"channels": 1, "sample_rate": "16000", "bit_depth": 16}, "sample_rate"),
        ({"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": 0}, "is_float"),
    ],
)
def test_unsupported_formats_are_refused_and_the_session_stays_idle(
    fmt: dict[str, object], field: str
) -> None:
    session = Session()
    with pytest.raises(InvalidFormat) as info:
        session.receive_text(json.dumps({"request": "start", "format": fmt}))
    assert field in info.value.message
    assert session.state is State.IDLE
    session.receive_text(START)
    assert session.state is State.STREAMING
