"""What the connection machine asks its driver to do, and what a codec may send itself.

The machine (``protocol/connection.py``) answers every input with a list of these; the
driver (``transport/driver.py``) carries them out in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from streamer.errors import ErrorCode
from streamer.events import Event
from streamer.protocol.messages import StartRequest

CodecReply: TypeAlias = Mapping[str, Any]
"""A codec's own message to its client, already in its front-end's JSON shape (a Realtime
``session.created``, a Twilio call's ``dtmf`` note): not a stream event."""

Outgoing: TypeAlias = Event | CodecReply
"""What a connection sends its client: a stream's event or its codec's own reply."""


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Admit and open a stream (``StreamRefused`` comes back if it is not admitted)."""

    request: StartRequest
    route: str | None = None
    """The stream's route, where it is not the connection's."""
    chunk_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send a codec's own reply (of a ``Reply``, ``Restart`` or ``Commit``) to the client."""

    payload: CodecReply


@dataclass(frozen=True, slots=True)
class Feed:
    """Feed audio to the open stream (it may wait: backpressure)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Finalize:
    """Force the open stream's pending audio to final results."""


@dataclass(frozen=True, slots=True)
class FinishStream:
    """Flush the stream: every result, then ``done``."""


@dataclass(frozen=True, slots=True)
class AbortStream:
    """Withdraw the stream's work at once; ``outcome`` is how it is counted."""

    outcome: str


@dataclass(frozen=True, slots=True)
class EmitError:
    """Send an ``error`` event (``reason``: the error's finer cause, ``ClientError.reason``)."""

    code: ErrorCode
    message: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection. ``code`` None is a normal close; ``tell`` sends an ``error``
    event with ``message`` first. ``send`` False: the peer is gone, send nothing."""

    code: ErrorCode | None = None
    message: str = ""
    tell: bool = False
    send: bool = True
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SteerStream:
    """Hand a codec's ``command`` to the open stream (``StreamPipeline.steer``)."""

    command: object


Action: TypeAlias = (
    OpenStream
    | Feed
    | Finalize
    | FinishStream
    | AbortStream
    | EmitError
    | Close
    | Send
    | SteerStream
)
