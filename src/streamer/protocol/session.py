"""The per-connection protocol state machine (sans-I/O).

Transports feed it what arrived (text or binary) and act on the typed command it returns.
Illegal messages raise a ``ClientError`` that names what was expected, and leave the state
as it was, so the connection stays usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from streamer.errors import AlreadyStarted, ClientError, InvalidMessage, NotStarted
from streamer.protocol.messages import (
    ClientMessage,
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
    parse_client_message,
)


class State(Enum):
    IDLE = "idle"  # connected, no stream open
    STREAMING = "streaming"  # between start and stop
    CLOSED = "closed"  # a stop asked to disconnect


@dataclass(frozen=True, slots=True)
class Audio:
    data: bytes


Command = ClientMessage | Audio

# (state, command kind) -> next state. A missing entry is a protocol error.
_TRANSITIONS: dict[tuple[State, type], State] = {
    (State.IDLE, StartRequest): State.STREAMING,
    (State.IDLE, KeepaliveRequest): State.IDLE,
    (State.STREAMING, Audio): State.STREAMING,
    (State.STREAMING, FinalizeRequest): State.STREAMING,
    (State.STREAMING, KeepaliveRequest): State.STREAMING,
    (State.STREAMING, StopRequest): State.IDLE,
}

_ERRORS: dict[tuple[State, type], type[ClientError]] = {
    (State.IDLE, Audio): NotStarted,
    (State.IDLE, StopRequest): NotStarted,
    (State.IDLE, FinalizeRequest): NotStarted,
    (State.STREAMING, StartRequest): AlreadyStarted,
}

_EXPECTED = {
    State.IDLE: "a 'start' request",
    State.STREAMING: "audio, 'finalize' or 'stop'",
    State.CLOSED: "nothing (the connection is closing)",
}


def _name(kind: type) -> str:
    return "audio" if kind is Audio else f"a {kind.__name__.removesuffix('Request').lower()!r}"


class Session:
    """Tracks where one connection is in the protocol."""

    __slots__ = ("state", "streams_started")

    def __init__(self) -> None:
        self.state = State.IDLE
        self.streams_started = 0

    def receive_text(self, text: str | bytes) -> Command:
        """Parse a text message and apply it; raises ``ClientError``."""
        return self.apply(parse_client_message(text))

    def receive_bytes(self, data: bytes) -> Command:
        """Apply a binary audio frame; raises ``ClientError``."""
        return self.apply(Audio(data))

    def apply(self, command: Command) -> Command:
        """Move to the next state, or raise an error naming what was expected."""
        key = (self.state, type(command))
        nxt = _TRANSITIONS.get(key)
        if nxt is None:
            error = _ERRORS.get(key, InvalidMessage)
            raise error(f"got {_name(type(command))}, expected {_EXPECTED[self.state]}")
        if isinstance(command, StopRequest) and command.disconnect:
            nxt = State.CLOSED
        if isinstance(command, StartRequest):
            command.format.to_audio_format().validate()
            self.streams_started += 1
        self.state = nxt
        return command
