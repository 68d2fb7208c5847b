"""What the connection machine is told: the client's messages, as a codec decoded them,
and what the runtime noticed.

The protocol's own requests (``StartRequest``, ``StopRequest``, ``FinalizeRequest``,
``KeepaliveRequest``, from ``protocol/messages.py``) are client inputs too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from streamer.errors import ClientError
from streamer.protocol.actions import CodecReply
from streamer.protocol.messages import (
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
)

# The client's messages (the protocol's requests, and audio) ...


@dataclass(frozen=True, slots=True)
class Audio:
    """A piece of audio in the stream's format (it may end inside a sample frame)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message the codec could not decode (or one the machine refuses)."""

    error: ClientError


# ... and what the runtime noticed.


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """The stream the machine asked to open was not admitted (or its options were bad)."""

    error: ClientError


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The open stream broke (a server fault in its own tasks)."""


@dataclass(frozen=True, slots=True)
class DrainStarted:
    """The server is shutting down: no new streams."""


@dataclass(frozen=True, slots=True)
class DrainExpired:
    """The drain's grace is over: open streams end now."""


@dataclass(frozen=True, slots=True)
class OutboxFull:
    """The client is not reading its events."""


@dataclass(frozen=True, slots=True)
class EndOfInput:
    """The client said it will send nothing more (gRPC half-close)."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The peer is gone; nothing can be sent any more."""


@dataclass(frozen=True, slots=True)
class Crashed:
    """The connection itself hit a server fault."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: the driver's clock reached the machine's ``deadline()``."""


@dataclass(frozen=True, slots=True)
class RateExceeded:
    """The client sent more messages than ``Limits.max_messages_per_second`` allow (the
    machine turns such a message into this input itself)."""


# Inputs of front-ends whose sessions hold one stream that they reconfigure (OpenAI
# Realtime, say): the codec decides what a message means; the machine, what follows.


@dataclass(frozen=True, slots=True)
class Restart:
    """Open the stream ``request`` describes, ending the open one first (flushed with
    ``flush``, else withdrawn); ``reply`` is sent once the new stream is asked for."""

    request: StartRequest
    route: str | None = None
    """The route of the new stream (an ``events.Route`` value; None: the connection's)."""
    chunk_seconds: float | None = None
    """The simple route's chunk for this stream (None: the server's)."""
    reply: CodecReply | None = None
    flush: bool = True


@dataclass(frozen=True, slots=True)
class Commit:
    """Audio the client held back, to be fed and finalized now: it ends an item."""

    data: bytes
    reply: CodecReply | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A codec's own answer to a message (an acknowledgement); nothing else happens."""

    payload: CodecReply


@dataclass(frozen=True, slots=True)
class Steer:
    """An instruction for the open stream that only the codec and the stream understand
    (new turn thresholds, end the turn now); ``reply`` is sent once it is handed over."""

    command: object
    reply: CodecReply | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """The client's last audio (what a codec still held), then the end of its stream and
    of the connection: a phone call that hung up (Twilio's ``stop``)."""

    data: bytes = b""


ClientInput: TypeAlias = (
    StartRequest
    | StopRequest
    | FinalizeRequest
    | KeepaliveRequest
    | Audio
    | Restart
    | Commit
    | Reply
    | Steer
    | Finish
)
Notice: TypeAlias = (
    StreamRefused
    | StreamFailed
    | DrainStarted
    | DrainExpired
    | OutboxFull
    | EndOfInput
    | Disconnected
    | Crashed
    | Tick
    | RateExceeded
)
Input: TypeAlias = ClientInput | Invalid | Notice
