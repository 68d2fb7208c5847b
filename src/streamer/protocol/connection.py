"""The per-connection state machine, sans-I/O: every front-end's connection logic, once.

A driver (``transport/driver.py``) feeds it inputs: the client's messages, decoded by a
codec, and notices from the runtime (a start was refused, the server began draining, the
outbox filled, the peer went away). The machine answers each input with the actions the
driver must carry out, in order: open, feed, finalize, finish or abort the stream, emit an
error event, close the connection. All per-connection state lives here; no transport
assigns it.

The rules are the table ``RULES``: (state, input kind) -> (next state, actions). A client
message with no rule is a protocol error naming what the state expects (``ERRORS`` says
which). Two kinds of connection share the table and differ in ``Mode``: a WebSocket carries
any number of streams and survives a client's mistake; a gRPC call is one stream, and a
mistake ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

from streamer.audio.formats import AudioFormat
from streamer.errors import (
    AlreadyStarted,
    ClientError,
    ErrorCode,
    InvalidMessage,
    NotStarted,
)
from streamer.protocol.messages import (
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
)


class State(Enum):
    IDLE = "idle"  # connected, no stream open
    STREAMING = "streaming"  # a stream is open
    CLOSED = "closed"  # the connection is ending; nothing more is read


# Inputs: the client's messages (the protocol's requests, and audio) ...


@dataclass(frozen=True, slots=True)
class Audio:
    """A piece of audio in the stream's format (it may end inside a sample frame)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message the codec could not decode."""

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
    reply: object = None
    flush: bool = True


@dataclass(frozen=True, slots=True)
class Commit:
    """Audio the client held back, to be fed and finalized now: it ends an item."""

    data: bytes
    reply: object = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A codec's own answer to a message (an acknowledgement); nothing else happens."""

    payload: object


@dataclass(frozen=True, slots=True)
class Steer:
    """An instruction for the open stream that only the codec and the stream understand
    (new turn thresholds, end the turn now); ``reply`` is sent once it is handed over."""

    command: object
    reply: object = None


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


# Actions, for the driver.


@dataclass(frozen=True, slots=True)
class OpenStream:
    request: StartRequest
    route: str | None = None
    """The stream's route, where it is not the connection's."""
    chunk_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send a codec's own reply (``Reply``, ``Restart``, ``Commit``) to the client."""

    payload: object


@dataclass(frozen=True, slots=True)
class Feed:
    data: bytes


@dataclass(frozen=True, slots=True)
class Finalize:
    pass


@dataclass(frozen=True, slots=True)
class FinishStream:
    """Flush the stream: every result, then ``done``."""


@dataclass(frozen=True, slots=True)
class AbortStream:
    """Withdraw the stream's work at once; ``outcome`` is how it is counted."""

    outcome: str


@dataclass(frozen=True, slots=True)
class SteerStream:
    """Hand ``command`` to the open stream."""

    command: object


@dataclass(frozen=True, slots=True)
class EmitError:
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection. ``code`` None is a normal close; ``tell`` sends an ``error``
    event with ``message`` first. ``send`` False: the peer is gone, send nothing."""

    code: ErrorCode | None = None
    message: str = ""
    tell: bool = False
    send: bool = True


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

SHUTTING_DOWN_MESSAGE = "the server is shutting down; connect to another instance"
IDLE_MESSAGE = "no audio or keepalive for {seconds:g} s"
INTERNAL_MESSAGE = "internal server error"
SLOW_CONSUMER_MESSAGE = "the client is not reading its events"
AUDIO_EXPIRED_MESSAGE = "the stream reached its limit of {seconds:g} s of audio"
WALL_EXPIRED_MESSAGE = "the stream reached its limit of {seconds:g} s"
RATE_MESSAGE = "more than {rate:g} messages a second"


@dataclass(frozen=True, slots=True)
class Mode:
    """How a kind of connection differs."""

    one_stream: bool
    """A gRPC call: one stream, a stop ends the connection, a client error ends it too."""
    closing_codes: frozenset[ErrorCode] = frozenset((ErrorCode.OVERLOADED, ErrorCode.SHUTTING_DOWN))
    """Client errors that end a connection that otherwise survives them."""
    finish_on_disconnect: bool = False
    """A client that goes away without ending its stream still has the stream finished
    (every final, then ``done``), not withdrawn: its results go elsewhere too (a phone
    call's subscribers), not only back on the connection."""

    @property
    def tell_on_close(self) -> bool:
        """Whether a close for a reason is told as an ``error`` event first (on gRPC the
        status may be lost to a racing write; a WebSocket has its close code)."""
        return self.one_stream


WEBSOCKET = Mode(one_stream=False)
WEBSOCKET_FINISHING = Mode(one_stream=False, finish_on_disconnect=True)
GRPC = Mode(one_stream=True)


@dataclass(frozen=True, slots=True)
class Limits:
    """Time limits of a connection; 0 turns one off."""

    idle_seconds: float = 0.0
    """No client message for this long (no ``start`` after connecting, no audio or
    keepalive while streaming) ends the connection with ``idle_timeout``. Time the server
    spends on the client's stream before it reads again (backpressure, a stopped stream's
    last results) is not the client's idle time."""
    max_audio_seconds: float = 0.0
    """A stream's audio past this many seconds is not taken: the stream is finished (its
    finals, then ``done``), then ``session_expired`` and the close."""
    max_wall_seconds: float = 0.0
    """A stream open this long (the driver's clock) ends like one past
    ``max_audio_seconds``."""
    max_messages_per_second: float = 0.0
    """Client messages a second (a token bucket that holds one second's worth) past which
    the connection ends with ``rate_limited``. Audio messages of at least
    ``1 / max_messages_per_second`` seconds of audio are not counted: backpressure paces
    them (the driver reads no more while the stream is busy)."""


_Step = Callable[["ConnectionMachine", Any], list[Action]]


def _open(m: ConnectionMachine, request: StartRequest) -> list[Action]:
    fmt = request.format.to_audio_format()
    fmt.validate()  # raises InvalidFormat: stay idle
    _stream_opens(m, fmt)
    return [OpenStream(request)]


def _stream_opens(m: ConnectionMachine, fmt: AudioFormat) -> None:
    """A stream opens now: its length limits count from here, in its format's bytes."""
    m.stream_opened = m.now
    m.stream_bytes = 0
    m.frame_bytes = fmt.frame_bytes
    m.bytes_per_second = fmt.frame_bytes * fmt.sample_rate


def _feed(m: ConnectionMachine, audio: Audio) -> list[Action]:
    limit = m.limits.max_audio_seconds
    if not limit:
        return [Feed(audio.data)]
    frame = m.frame_bytes or 1
    room = int(limit * m.bytes_per_second) // frame * frame - m.stream_bytes
    if len(audio.data) <= room:
        m.stream_bytes += len(audio.data)
        return [Feed(audio.data)]
    head: list[Action] = [Feed(audio.data[:room])] if room > 0 else []
    m.stream_bytes += max(room, 0)
    return [*head, *_expire(m, AUDIO_EXPIRED_MESSAGE.format(seconds=limit))]


def _expire(m: ConnectionMachine, message: str) -> list[Action]:
    """The stream reached a limit of its length: finals and ``done``, then the reason."""
    m.state = State.CLOSED
    return [
        FinishStream(),
        EmitError(ErrorCode.SESSION_EXPIRED, message),
        Close(ErrorCode.SESSION_EXPIRED, message),
    ]


def _finalize(m: ConnectionMachine, _: FinalizeRequest) -> list[Action]:
    return [Finalize()]


def _nothing(m: ConnectionMachine, _: object) -> list[Action]:
    return []


def _stop(m: ConnectionMachine, stop: StopRequest) -> list[Action]:
    if stop.disconnect or m.mode.one_stream:
        m.state = State.CLOSED
        return [FinishStream(), Close()]
    return [FinishStream(), *m.idle_again()]


def _refused(m: ConnectionMachine, notice: StreamRefused) -> list[Action]:
    return m.client_error(notice.error, stream_open=False)


def _stream_failed(m: ConnectionMachine, _: StreamFailed) -> list[Action]:
    m.state = State.CLOSED
    return [AbortStream("error"), Close(ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE, tell=True)]


def _drain_idle(m: ConnectionMachine, _: object) -> list[Action]:
    m.draining = True
    m.state = State.CLOSED
    return [Close(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE, tell=m.mode.tell_on_close)]


def _drain_streaming(m: ConnectionMachine, _: DrainStarted) -> list[Action]:
    m.draining = True  # the stream may go on until the drain expires
    return []


def _drain_expired(m: ConnectionMachine, _: DrainExpired) -> list[Action]:
    m.draining = True
    m.state = State.CLOSED
    # Finals and done first; the close code says why.
    return [FinishStream(), Close(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)]


def _slow(m: ConnectionMachine, _: OutboxFull) -> list[Action]:
    m.state = State.CLOSED
    close = Close(ErrorCode.SLOW_CONSUMER, SLOW_CONSUMER_MESSAGE, tell=m.mode.tell_on_close)
    return [AbortStream("slow_consumer"), close]


def _end_of_input(m: ConnectionMachine, _: EndOfInput) -> list[Action]:
    finish: list[Action] = [FinishStream()] if m.state is State.STREAMING else []
    m.state = State.CLOSED
    return [*finish, Close()]


def _gone(m: ConnectionMachine, _: Disconnected) -> list[Action]:
    end: list[Action] = [AbortStream("disconnected")]
    if m.mode.finish_on_disconnect and m.state is State.STREAMING:
        end = [FinishStream()]
    m.state = State.CLOSED
    return [*end, Close(send=False)]


def _crashed(m: ConnectionMachine, _: Crashed) -> list[Action]:
    m.state = State.CLOSED
    return [AbortStream("error"), Close(ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE, tell=True)]


def _crashed_closing(m: ConnectionMachine, _: Crashed) -> list[Action]:
    # A fault while the connection was ending (flushing the last stream, say).
    return [Close(ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE, tell=True)]


def _restart(m: ConnectionMachine, restart: Restart) -> list[Action]:
    fmt = restart.request.format.to_audio_format()
    fmt.validate()  # raises InvalidFormat: no change
    _stream_opens(m, fmt)
    end: list[Action] = []
    if m.state is State.STREAMING:
        end = [FinishStream()] if restart.flush else [AbortStream("restarted")]
    m.streams_started += 1
    sent: list[Action] = [] if restart.reply is None else [Send(restart.reply)]
    return [*end, OpenStream(restart.request, restart.route, restart.chunk_seconds), *sent]


def _commit(m: ConnectionMachine, commit: Commit) -> list[Action]:
    sent: list[Action] = [] if commit.reply is None else [Send(commit.reply)]
    fed: list[Action] = _feed(m, Audio(commit.data)) if commit.data else []
    if m.state is State.CLOSED:  # the audio reached the stream's limit: it expired
        return [*sent, *fed]
    return [*sent, *fed, Finalize()]


def _reply(m: ConnectionMachine, reply: Reply) -> list[Action]:
    return [Send(reply.payload)]


def _steer(m: ConnectionMachine, steer: Steer) -> list[Action]:
    actions: list[Action] = [SteerStream(steer.command)]
    if steer.reply is not None:
        actions.append(Send(steer.reply))
    return actions


def _finish(m: ConnectionMachine, finish: Finish) -> list[Action]:
    fed: list[Action] = [Feed(finish.data)] if finish.data and m.state is State.STREAMING else []
    ended: list[Action] = [FinishStream()] if m.state is State.STREAMING else []
    m.state = State.CLOSED
    return [*fed, *ended, Close()]


def _tick(m: ConnectionMachine, _: Tick) -> list[Action]:
    wall = m.limits.max_wall_seconds
    if wall and m.state is State.STREAMING and m.now >= m.stream_opened + wall:
        return _expire(m, WALL_EXPIRED_MESSAGE.format(seconds=wall))
    idle = m.limits.idle_seconds
    if not idle or m.now < m.last_heard + idle:
        return []  # early, or a deadline that has moved on
    message = IDLE_MESSAGE.format(seconds=idle)
    finish: list[Action] = [FinishStream()] if m.state is State.STREAMING else []
    m.state = State.CLOSED
    # Told first, then the stream's finals and done, then the close.
    return [
        EmitError(ErrorCode.IDLE_TIMEOUT, message),
        *finish,
        Close(ErrorCode.IDLE_TIMEOUT, message),
    ]


def _rate_limited(m: ConnectionMachine, _: RateExceeded) -> list[Action]:
    abort: list[Action] = [AbortStream("error")] if m.state is State.STREAMING else []
    m.state = State.CLOSED
    message = RATE_MESSAGE.format(rate=m.limits.max_messages_per_second)
    if m.mode.tell_on_close:
        return [*abort, Close(ErrorCode.RATE_LIMITED, message, tell=True)]
    return [
        *abort,
        EmitError(ErrorCode.RATE_LIMITED, message),
        Close(ErrorCode.RATE_LIMITED, message),
    ]


_I, _S = State.IDLE, State.STREAMING

RULES: dict[tuple[State, type], tuple[State | None, _Step]] = {
    # The client's messages. A next state of None: the step decides.
    (_I, StartRequest): (_S, _open),
    (_I, KeepaliveRequest): (_I, _nothing),
    (_S, Audio): (None, _feed),
    (_S, FinalizeRequest): (_S, _finalize),
    (_S, KeepaliveRequest): (_S, _nothing),
    (_S, StopRequest): (None, _stop),
    # The runtime's notices.
    (_S, StreamRefused): (None, _refused),
    (_S, StreamFailed): (None, _stream_failed),
    (_I, DrainStarted): (None, _drain_idle),
    (_S, DrainStarted): (_S, _drain_streaming),
    (_I, DrainExpired): (None, _drain_idle),
    (_S, DrainExpired): (None, _drain_expired),
    (_I, OutboxFull): (None, _slow),
    (_S, OutboxFull): (None, _slow),
    (_I, EndOfInput): (None, _end_of_input),
    (_S, EndOfInput): (None, _end_of_input),
    (_I, Disconnected): (None, _gone),
    (_S, Disconnected): (None, _gone),
    (_I, Crashed): (None, _crashed),
    (_S, Crashed): (None, _crashed),
    (_I, Tick): (None, _tick),
    (_S, Tick): (None, _tick),
    (_I, RateExceeded): (None, _rate_limited),
    (_S, RateExceeded): (None, _rate_limited),
    (State.CLOSED, Crashed): (None, _crashed_closing),
    # A session that reconfigures its one stream.
    (_I, Restart): (_S, _restart),
    (_S, Restart): (_S, _restart),
    (_S, Commit): (None, _commit),
    (_I, Reply): (_I, _reply),
    (_S, Reply): (_S, _reply),
    (_S, Steer): (_S, _steer),
    # A client that ends its stream and its connection in one message.
    (_I, Finish): (None, _finish),
    (_S, Finish): (None, _finish),
}
"""(state, input kind) -> (next state, step). Every notice is handled in every open state;
in ``CLOSED`` every input but a crash is ignored."""

ERRORS: dict[tuple[State, type], type[ClientError]] = {
    (_I, Audio): NotStarted,
    (_I, StopRequest): NotStarted,
    (_I, FinalizeRequest): NotStarted,
    (_I, Commit): NotStarted,
    (_I, Steer): NotStarted,
    (_S, StartRequest): AlreadyStarted,
}
"""Client messages out of order, and the error each gets (any other: ``InvalidMessage``)."""

EXPECTED = {
    State.IDLE: "a 'start' request",
    State.STREAMING: "audio, 'finalize' or 'stop'",
    State.CLOSED: "nothing (the connection is closing)",
}


def describe(kind: type) -> str:
    """How an error message names a kind of client message."""
    return "audio" if kind is Audio else f"a {kind.__name__.removesuffix('Request').lower()!r}"


class ConnectionMachine:
    """Where one connection is, and what to do next."""

    __slots__ = (
        "bytes_per_second",
        "draining",
        "frame_bytes",
        "last_heard",
        "limits",
        "mode",
        "now",
        "state",
        "stream_bytes",
        "stream_opened",
        "streams_started",
        "tokens",
        "tokens_at",
    )

    def __init__(self, mode: Mode = WEBSOCKET, limits: Limits = Limits(), now: float = 0.0) -> None:
        self.mode = mode
        self.limits = limits
        self.state = State.IDLE
        self.draining = False
        self.streams_started = 0
        self.now = now
        """The driver's clock (seconds), as of the last input."""
        self.last_heard = now
        """When the client last sent a message."""
        self.stream_opened = now
        """When the open stream (or the last one) was opened."""
        self.stream_bytes = 0
        """Bytes of audio the open stream took (counted when ``max_audio_seconds`` is set)."""
        self.frame_bytes = 0
        self.bytes_per_second = 0
        """The open stream's format: bytes of one frame, and of one second."""
        self.tokens = limits.max_messages_per_second
        self.tokens_at = now
        """The message-rate bucket: messages the client may still send, as of when."""

    def deadline(self) -> float | None:
        """When the driver must send a ``Tick`` if nothing else arrives first (its clock)."""
        if self.state is State.CLOSED:
            return None
        deadlines = []
        if self.limits.idle_seconds:
            deadlines.append(self.last_heard + self.limits.idle_seconds)
        if self.limits.max_wall_seconds and self.state is State.STREAMING:
            deadlines.append(self.stream_opened + self.limits.max_wall_seconds)
        return min(deadlines, default=None)

    def receive(self, event: Input, now: float | None = None) -> list[Action]:
        """The actions that ``event`` (at ``now`` on the driver's clock) calls for, in
        order; the state moves with them."""
        if now is not None:
            self.now = now
        if isinstance(event, ClientInput | Invalid):
            self.last_heard = self.now
            if self.limits.max_messages_per_second and not self._take_token(event):
                event = RateExceeded()
        if self.state is State.CLOSED and not isinstance(event, Crashed):
            return []
        if isinstance(event, Invalid):
            return self.client_error(event.error)
        key = (self.state, type(event))
        rule = RULES.get(key)
        if rule is None:
            error = ERRORS.get(key, InvalidMessage)
            return self.client_error(
                error(f"got {describe(type(event))}, expected {EXPECTED[self.state]}")
            )
        nxt, step = rule
        try:
            actions = step(self, event)
        except ClientError as error:
            return self.client_error(error)
        if nxt is not None:
            self.state = nxt
        if isinstance(event, StartRequest):
            self.streams_started += 1
        return actions

    def busy_until(self, now: float) -> None:
        """The driver read nothing until ``now``: it was carrying out the machine's actions
        (feeding a stream that applies backpressure, flushing a stopped stream's results).
        The client could not be heard meanwhile, so its idle time counts from ``now``."""
        self.last_heard = max(self.last_heard, now)

    def _take_token(self, event: ClientInput | Invalid) -> bool:
        """Count a client message against the rate; False: over it."""
        rate = self.limits.max_messages_per_second
        if (
            isinstance(event, Audio)
            and self.state is State.STREAMING
            and len(event.data) * rate >= self.bytes_per_second
        ):
            return True  # audio long enough to be paced by backpressure, not counted
        elapsed = max(0.0, self.now - self.tokens_at)
        self.tokens = min(rate, self.tokens + elapsed * rate)
        self.tokens_at = self.now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def client_error(self, error: ClientError, *, stream_open: bool = True) -> list[Action]:
        """The client erred (or its stream was refused): tell it, and end the connection
        when the mode or the error says so. ``stream_open`` False: the stream this state
        stands for was never opened."""
        streaming = self.state is State.STREAMING
        if self.mode.one_stream or error.code in self.mode.closing_codes:
            self.state = State.CLOSED
            abort: list[Action] = [AbortStream("error")] if streaming and stream_open else []
            if self.mode.tell_on_close:
                return [*abort, Close(error.code, error.message, tell=True)]
            return [*abort, EmitError(error.code, error.message), Close(error.code, error.message)]
        if streaming and not stream_open:
            return [EmitError(error.code, error.message), *self.idle_again()]
        return [EmitError(error.code, error.message)]

    def idle_again(self) -> list[Action]:
        """The stream is over: back to idle, or closed when the server is draining."""
        if self.draining:
            self.state = State.CLOSED
            return [Close(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)]
        self.state = State.IDLE
        return []
