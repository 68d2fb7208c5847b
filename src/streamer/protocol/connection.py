"""The per-connection state machine, sans-I/O: every front-end's connection logic, once.

A driver (``transport/driver.py``) feeds it inputs (``protocol/inputs.py``): the client's
messages, decoded by a codec, and notices from the runtime (a start was refused, the server
began draining, the outbox filled, the peer went away). The machine answers each input with
the actions (``protocol/actions.py``) the driver must carry out, in order: open, feed,
finalize, finish or abort the stream, emit an error event, close the connection. All
per-connection state lives here; no transport assigns it.

The rules are the table ``RULES``: (state, input kind) -> rules, each naming its next state
and the step that gives its actions; where one state and input kind lead to different
states, a guard tells the rules apart. Only ``ConnectionMachine.receive`` assigns the state,
from the rule it took. A client message with no rule is a protocol error naming what the
state expects (``ERRORS`` says which). Two kinds of connection share the table and differ in
``Mode``: a WebSocket carries any number of streams and survives a client's mistake; a gRPC
call is one stream, and a mistake ends it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from streamer.protocol.actions import (
    AbortStream,
    Action,
    Close,
    EmitError,
    Feed,
    Finalize,
    FinishStream,
    OpenStream,
    Send,
    SteerStream,
)
from streamer.protocol.inputs import (
    Audio,
    ClientInput,
    Commit,
    Crashed,
    Disconnected,
    DrainExpired,
    DrainStarted,
    EndOfInput,
    Finish,
    Input,
    Invalid,
    OutboxFull,
    RateExceeded,
    Reply,
    Restart,
    Steer,
    StreamFailed,
    StreamRefused,
    Tick,
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


UNLIMITED = Limits()
"""No limit on a connection's time, a stream's length or the message rate."""


Step: TypeAlias = Callable[["ConnectionMachine", Any], list[Action]]
"""What a rule does: the actions for the input (it may update the machine's counters, never
its state)."""
Guard: TypeAlias = Callable[["ConnectionMachine", Any], bool]
"""When a rule applies, where a state and an input kind have several."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: on its input, in its state, when ``when`` holds (None:
    otherwise), go to ``next`` with the actions ``step`` returns."""

    next: State
    step: Step
    when: Guard | None = None


# Guards.


def _closes(m: ConnectionMachine, x: Invalid | StreamRefused) -> bool:
    """The error ends the connection: any on a one-stream connection, the closing codes on
    others."""
    return m.mode.one_stream or x.error.code in m.mode.closing_codes


def _draining(m: ConnectionMachine, _: object) -> bool:
    return m.draining


def _ends_connection(m: ConnectionMachine, stop: StopRequest) -> bool:
    """A stop that ends the connection too: asked for, or on a one-stream connection."""
    return stop.disconnect or m.mode.one_stream


def _past_audio_limit(m: ConnectionMachine, audio: Audio | Commit) -> bool:
    """The audio would take the stream past ``Limits.max_audio_seconds``."""
    room = m.audio_room()
    return room is not None and len(audio.data) > room


def _wall_expired(m: ConnectionMachine, _: Tick) -> bool:
    """The stream has been open ``Limits.max_wall_seconds``."""
    wall = m.limits.max_wall_seconds
    return bool(wall) and m.now >= m.stream_opened + wall


def _idle_expired(m: ConnectionMachine, _: Tick) -> bool:
    """The client has said nothing for ``Limits.idle_seconds``."""
    idle = m.limits.idle_seconds
    return bool(idle) and m.now >= m.last_heard + idle


def _finish_on_disconnect(m: ConnectionMachine, _: Disconnected) -> bool:
    return m.mode.finish_on_disconnect


# Steps.


def _nothing(m: ConnectionMachine, _: object) -> list[Action]:
    return []


def _stream_opens(m: ConnectionMachine, fmt: AudioFormat) -> None:
    """A stream opens now: its length limits count from here, in its format's bytes."""
    m.stream_opened = m.now
    m.stream_bytes = 0
    m.frame_bytes = fmt.frame_bytes
    m.bytes_per_second = fmt.frame_bytes * fmt.sample_rate
    m.streams_started += 1


def _open(m: ConnectionMachine, request: StartRequest) -> list[Action]:
    fmt = request.format.to_audio_format()
    fmt.validate()  # raises InvalidFormat: a client error instead
    _stream_opens(m, fmt)
    return [OpenStream(request)]


def _feed(m: ConnectionMachine, audio: Audio) -> list[Action]:
    m.stream_bytes += len(audio.data)
    return [Feed(audio.data)]


def _feed_to_limit(m: ConnectionMachine, audio: Audio | Commit) -> list[Action]:
    """Feed what fits under the audio limit (whole frames), then expire the stream."""
    room = max(m.audio_room() or 0, 0)
    m.stream_bytes += room
    head: list[Action] = [Feed(audio.data[:room])] if room else []
    message = AUDIO_EXPIRED_MESSAGE.format(seconds=m.limits.max_audio_seconds)
    return [*head, *_expired(message)]


def _expired(message: str) -> list[Action]:
    """The stream reached a limit of its length: finals and ``done``, then the reason."""
    return [
        FinishStream(),
        EmitError(ErrorCode.SESSION_EXPIRED, message),
        Close(ErrorCode.SESSION_EXPIRED, message),
    ]


def _finalize(m: ConnectionMachine, _: FinalizeRequest) -> list[Action]:
    return [Finalize()]


def _finish_stream(m: ConnectionMachine, _: object) -> list[Action]:
    return [FinishStream()]


def _finish_and_close(m: ConnectionMachine, _: object) -> list[Action]:
    return [FinishStream(), Close()]


def _finish_and_shut(m: ConnectionMachine, _: object) -> list[Action]:
    """The stream is over while the server drains: the connection ends with it."""
    return [FinishStream(), Close(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)]


def _close(m: ConnectionMachine, _: object) -> list[Action]:
    return [Close()]


def _tell(m: ConnectionMachine, x: Invalid | StreamRefused) -> list[Action]:
    return [EmitError(x.error.code, x.error.message, x.error.reason)]


def _tell_and_shut(m: ConnectionMachine, x: StreamRefused) -> list[Action]:
    """A refusal while the server drains: told, then the connection ends."""
    return [*_tell(m, x), Close(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE)]


def _refuse_and_close(m: ConnectionMachine, x: Invalid | StreamRefused) -> list[Action]:
    """An error that ends the connection (no stream open): told in-band, then the close."""
    error = x.error
    if m.mode.tell_on_close:
        return [Close(error.code, error.message, tell=True, reason=error.reason)]
    return [
        EmitError(error.code, error.message, error.reason),
        Close(error.code, error.message, reason=error.reason),
    ]


def _abort_and_close(m: ConnectionMachine, x: Invalid) -> list[Action]:
    return [AbortStream("error"), *_refuse_and_close(m, x)]


def _fault(m: ConnectionMachine, _: object) -> list[Action]:
    return [AbortStream("error"), Close(ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE, tell=True)]


def _fault_closing(m: ConnectionMachine, _: Crashed) -> list[Action]:
    # A fault while the connection was ending (flushing the last stream, say).
    return [Close(ErrorCode.INTERNAL_ERROR, INTERNAL_MESSAGE, tell=True)]


def _drain_idle(m: ConnectionMachine, _: object) -> list[Action]:
    m.draining = True
    return [Close(ErrorCode.SHUTTING_DOWN, SHUTTING_DOWN_MESSAGE, tell=m.mode.tell_on_close)]


def _drain_streaming(m: ConnectionMachine, _: DrainStarted) -> list[Action]:
    m.draining = True  # the stream may go on until the drain expires
    return []


def _drain_expired(m: ConnectionMachine, _: DrainExpired) -> list[Action]:
    m.draining = True
    # Finals and done first; the close code says why.
    return _finish_and_shut(m, _)


def _slow(m: ConnectionMachine, _: OutboxFull) -> list[Action]:
    close = Close(ErrorCode.SLOW_CONSUMER, SLOW_CONSUMER_MESSAGE, tell=m.mode.tell_on_close)
    return [AbortStream("slow_consumer"), close]


def _gone(m: ConnectionMachine, _: Disconnected) -> list[Action]:
    return [AbortStream("disconnected"), Close(send=False)]


def _gone_finishing(m: ConnectionMachine, _: Disconnected) -> list[Action]:
    return [FinishStream(), Close(send=False)]


def _restart(m: ConnectionMachine, restart: Restart) -> list[Action]:
    fmt = restart.request.format.to_audio_format()
    fmt.validate()  # raises InvalidFormat: a client error instead, no change
    _stream_opens(m, fmt)
    sent: list[Action] = [] if restart.reply is None else [Send(restart.reply)]
    return [OpenStream(restart.request, restart.route, restart.chunk_seconds), *sent]


def _restart_streaming(m: ConnectionMachine, restart: Restart) -> list[Action]:
    opened = _restart(m, restart)  # validated before the open stream is ended
    end = FinishStream() if restart.flush else AbortStream("restarted")
    return [end, *opened]


def _sent(commit: Commit) -> list[Action]:
    return [] if commit.reply is None else [Send(commit.reply)]


def _commit(m: ConnectionMachine, commit: Commit) -> list[Action]:
    fed = _feed(m, Audio(commit.data)) if commit.data else []
    return [*_sent(commit), *fed, Finalize()]


def _commit_to_limit(m: ConnectionMachine, commit: Commit) -> list[Action]:
    return [*_sent(commit), *_feed_to_limit(m, commit)]


def _reply(m: ConnectionMachine, reply: Reply) -> list[Action]:
    return [Send(reply.payload)]


def _steer(m: ConnectionMachine, steer: Steer) -> list[Action]:
    return [SteerStream(steer.command), *([] if steer.reply is None else [Send(steer.reply)])]


def _finish(m: ConnectionMachine, finish: Finish) -> list[Action]:
    fed: list[Action] = [Feed(finish.data)] if finish.data else []
    return [*fed, FinishStream(), Close()]


def _wall_expiry(m: ConnectionMachine, _: Tick) -> list[Action]:
    return _expired(WALL_EXPIRED_MESSAGE.format(seconds=m.limits.max_wall_seconds))


def _idle_timeout(m: ConnectionMachine, _: Tick) -> list[Action]:
    message = IDLE_MESSAGE.format(seconds=m.limits.idle_seconds)
    return [EmitError(ErrorCode.IDLE_TIMEOUT, message), Close(ErrorCode.IDLE_TIMEOUT, message)]


def _idle_timeout_streaming(m: ConnectionMachine, _: Tick) -> list[Action]:
    # Told first, then the stream's finals and done, then the close.
    told, close = _idle_timeout(m, _)
    return [told, FinishStream(), close]


def _rate_limited(m: ConnectionMachine, _: RateExceeded) -> list[Action]:
    message = RATE_MESSAGE.format(rate=m.limits.max_messages_per_second)
    if m.mode.tell_on_close:
        return [Close(ErrorCode.RATE_LIMITED, message, tell=True)]
    return [EmitError(ErrorCode.RATE_LIMITED, message), Close(ErrorCode.RATE_LIMITED, message)]


def _rate_limited_streaming(m: ConnectionMachine, _: RateExceeded) -> list[Action]:
    return [AbortStream("error"), *_rate_limited(m, _)]


_I, _S, _C = State.IDLE, State.STREAMING, State.CLOSED

RULES: dict[tuple[State, type], tuple[Rule, ...]] = {
    # The client's messages.
    (_I, StartRequest): (Rule(_S, _open),),
    (_I, KeepaliveRequest): (Rule(_I, _nothing),),
    (_S, Audio): (Rule(_C, _feed_to_limit, _past_audio_limit), Rule(_S, _feed)),
    (_S, FinalizeRequest): (Rule(_S, _finalize),),
    (_S, KeepaliveRequest): (Rule(_S, _nothing),),
    (_S, StopRequest): (
        Rule(_C, _finish_and_close, _ends_connection),
        Rule(_C, _finish_and_shut, _draining),
        Rule(_I, _finish_stream),
    ),
    # A message the codec could not decode, or that the state has no rule for.
    (_I, Invalid): (Rule(_C, _refuse_and_close, _closes), Rule(_I, _tell)),
    (_S, Invalid): (Rule(_C, _abort_and_close, _closes), Rule(_S, _tell)),
    # The runtime's notices.
    (_S, StreamRefused): (
        Rule(_C, _refuse_and_close, _closes),
        Rule(_C, _tell_and_shut, _draining),
        Rule(_I, _tell),
    ),
    (_S, StreamFailed): (Rule(_C, _fault),),
    (_I, DrainStarted): (Rule(_C, _drain_idle),),
    (_S, DrainStarted): (Rule(_S, _drain_streaming),),
    (_I, DrainExpired): (Rule(_C, _drain_idle),),
    (_S, DrainExpired): (Rule(_C, _drain_expired),),
    (_I, OutboxFull): (Rule(_C, _slow),),
    (_S, OutboxFull): (Rule(_C, _slow),),
    (_I, EndOfInput): (Rule(_C, _close),),
    (_S, EndOfInput): (Rule(_C, _finish_and_close),),
    (_I, Disconnected): (Rule(_C, _gone),),
    (_S, Disconnected): (
        Rule(_C, _gone_finishing, _finish_on_disconnect),
        Rule(_C, _gone),
    ),
    (_I, Crashed): (Rule(_C, _fault),),
    (_S, Crashed): (Rule(_C, _fault),),
    (_C, Crashed): (Rule(_C, _fault_closing),),
    (_I, Tick): (Rule(_C, _idle_timeout, _idle_expired), Rule(_I, _nothing)),
    (_S, Tick): (
        Rule(_C, _wall_expiry, _wall_expired),
        Rule(_C, _idle_timeout_streaming, _idle_expired),
        Rule(_S, _nothing),  # early, or a deadline that has moved on
    ),
    (_I, RateExceeded): (Rule(_C, _rate_limited),),
    (_S, RateExceeded): (Rule(_C, _rate_limited_streaming),),
    # A session that reconfigures its one stream.
    (_I, Restart): (Rule(_S, _restart),),
    (_S, Restart): (Rule(_S, _restart_streaming),),
    (_S, Commit): (Rule(_C, _commit_to_limit, _past_audio_limit), Rule(_S, _commit)),
    (_I, Reply): (Rule(_I, _reply),),
    (_S, Reply): (Rule(_S, _reply),),
    (_S, Steer): (Rule(_S, _steer),),
    # A client that ends its stream and its connection in one message.
    (_I, Finish): (Rule(_C, _close),),
    (_S, Finish): (Rule(_C, _finish),),
}
"""(state, input kind) -> its rules, the first whose guard holds applies; the last of each
has none. Every notice is handled in every open state where the runtime can send it (a
refused start and a broken stream follow an open stream); in ``CLOSED`` every input but a
crash is ignored. A client message with no rule, and one a step refuses (raising a
``ClientError``), is taken as ``Invalid``."""


ERRORS: dict[tuple[State, type], type[ClientError]] = {
    (_I, Audio): NotStarted,
    (_I, StopRequest): NotStarted,
    (_I, FinalizeRequest): NotStarted,
    (_I, Commit): NotStarted,
    (_I, Steer): NotStarted,
    (_S, StartRequest): AlreadyStarted,
}
"""Client messages out of order, and the error each gets (any other: ``InvalidMessage``)."""


def state_diagram() -> str:
    """The table as a Mermaid state diagram (drawn in ``docs/architecture.md``): one arrow
    a rule, labelled with its input kind and guard."""
    lines = ["stateDiagram-v2", f"    [*] --> {_I.value}"]
    for (state, kind), rules in RULES.items():
        for rule in rules:
            label = kind.__name__
            if len(rules) > 1:
                guard = rule.when.__name__.strip("_").replace("_", " ") if rule.when else "else"
                label += f" [{guard}]"
            lines.append(f"    {state.value} --> {rule.next.value}: {label}")
    lines.append(f"    {_C.value} --> [*]")
    return "\n".join(lines) + "\n"


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
        "rule",
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
        self.rule: Rule | None = None
        """The rule the last input took."""
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
        order; the state moves to the next state of the rule it takes."""
        if now is not None:
            self.now = now
        if isinstance(event, ClientInput | Invalid):
            self.last_heard = self.now
            if self.limits.max_messages_per_second and not self._take_token(event):
                event = RateExceeded()
        if self.state is State.CLOSED and not isinstance(event, Crashed):
            return []
        key = (self.state, type(event))
        rules = RULES.get(key)
        if rules is None:
            error = ERRORS.get(key, InvalidMessage)
            event = Invalid(error(f"got {describe(type(event))}, expected {EXPECTED[self.state]}"))
            rules = RULES[self.state, Invalid]
        try:
            return self._take(event, rules)
        except ClientError as error:  # the step refused the input: a client error instead
            return self._take(Invalid(error))

    def _take(self, event: Input, rules: Sequence[Rule] | None = None) -> list[Action]:
        """Apply the first rule of ``event``'s kind in this state whose guard holds
        (``rules``: those of its kind in this state, when already looked up)."""
        if rules is None:
            rules = RULES[self.state, type(event)]
        for rule in rules:  # a loop, not next() over a generator: once per message
            if rule.when is None or rule.when(self, event):
                break
        else:
            raise AssertionError(f"no rule of {self.state} takes {type(event).__name__}")
        actions = rule.step(self, event)
        self.state = rule.next
        self.rule = rule
        return actions

    def audio_room(self) -> int | None:
        """Bytes of audio the open stream may still take (whole frames), or None: no limit."""
        limit = self.limits.max_audio_seconds
        if not limit:
            return None
        frame = self.frame_bytes or 1
        return int(limit * self.bytes_per_second) // frame * frame - self.stream_bytes

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
