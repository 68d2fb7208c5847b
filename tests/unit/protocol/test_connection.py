"""The connection state machine over every order of inputs, client messages and notices."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from streamer.codecs.v1_json import decode_bytes, decode_text
from streamer.errors import (
    STREAM_LIMIT,
    ClientError,
    ErrorCode,
    InvalidFormat,
    Overloaded,
    ShuttingDown,
    StreamLimit,
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
from streamer.protocol.connection import (
    GRPC,
    RULES,
    WEBSOCKET,
    WEBSOCKET_FINISHING,
    ConnectionMachine,
    Limits,
    Mode,
    State,
    state_diagram,
)
from streamer.protocol.inputs import (
    Audio,
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
from streamer.protocol.messages import StartRequest

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


def decode(msg: str | bytes) -> Input:
    try:
        return decode_bytes(msg) if isinstance(msg, bytes) else decode_text(msg)
    except ClientError as error:
        return Invalid(error)


def errors_of(actions: list[Action]) -> list[ErrorCode]:
    return [a.code for a in actions if isinstance(a, EmitError)]


def expected(state: State, name: str) -> tuple[State, ErrorCode | None]:
    """The reference model a WebSocket connection must follow (as the v1 session did)."""
    if state is State.CLOSED:
        return state, None  # nothing more is read, nothing is answered
    if state is State.IDLE:
        if name == "start":
            return State.STREAMING, None
        if name == "keepalive":
            return State.IDLE, None
        return State.IDLE, ErrorCode.NOT_STARTED
    if name == "start":
        return State.STREAMING, ErrorCode.ALREADY_STARTED
    if name == "stop":
        return State.IDLE, None
    if name == "stop_close":
        return State.CLOSED, None
    return State.STREAMING, None


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_every_sequence_follows_the_reference_model(length: int) -> None:
    for seq in itertools.product(MESSAGES, repeat=length):
        machine = ConnectionMachine(WEBSOCKET)
        state = State.IDLE
        for name in seq:
            state, error = expected(state, name)
            actions = machine.receive(decode(MESSAGES[name]))
            assert errors_of(actions) == ([error] if error else []), seq
            assert machine.state is state, seq


def test_each_message_asks_for_its_action() -> None:
    machine = ConnectionMachine(WEBSOCKET)
    [open_] = machine.receive(decode(START))
    assert isinstance(open_, OpenStream) and open_.request.format.sample_rate == 16000
    assert machine.receive(decode(AUDIO)) == [Feed(AUDIO)]
    assert machine.receive(decode(FINALIZE)) == [Finalize()]
    assert machine.receive(decode(KEEPALIVE)) == []
    assert machine.receive(decode(STOP)) == [FinishStream()]
    assert machine.receive(decode(START))[0] == open_
    assert machine.receive(decode(STOP_CLOSE)) == [FinishStream(), Close()]
    assert machine.streams_started == 2


def test_errors_name_what_was_expected() -> None:
    machine = ConnectionMachine()
    [error] = machine.receive(decode(AUDIO))
    assert isinstance(error, EmitError) and "expected a 'start' request" in error.message
    machine.receive(decode(START))
    [error] = machine.receive(decode(START))
    assert isinstance(error, EmitError)
    assert "expected audio, 'finalize' or 'stop'" in error.message


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("{not json", "invalid_json", "JSON"),
        ("[1, 2]", "invalid_message", "JSON object"),
        ('"start"', "invalid_message", "JSON object"),
        ("null", "invalid_message", "JSON object"),
        ("{}", "invalid_message", "request"),
        ('{"request": "rewind"}', "invalid_message", "rewind"),
        ('{"request": "stop", "hurry": true}', "invalid_message", "hurry"),
        ('{"request": "stop", "disconnect": "maybe"}', "invalid_message", "disconnect"),
        ('{"request": "start"}', "invalid_message", "format"),
        (
            '{"request": "start", "format": {"channels": 1, "sample_rate": 16000,'
            ' "bit_depth": 16}, "colour": "red"}',
            "invalid_message",
            "colour",
        ),
        (
            '{"request": "start", "format": {"channels": 1, "sample_rate": 16000,'
            ' "bit_depth": 16, "endian": "big"}}',
            "invalid_format",
            "endian",
        ),
    ],
)
def test_malformed_messages_get_typed_errors(text: str, code: str, needle: str) -> None:
    machine = ConnectionMachine()
    [error] = machine.receive(decode(text))
    assert isinstance(error, EmitError) and error.code == code and needle in error.message
    assert machine.state is State.IDLE


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
def test_unsupported_formats_are_refused_and_the_connection_stays_idle(
    fmt: dict[str, object], field: str
) -> None:
    machine = ConnectionMachine()
    [error] = machine.receive(decode(json.dumps({"request": "start", "format": fmt})))
    assert isinstance(error, EmitError) and error.code == "invalid_format"
    assert field in error.message
    assert machine.state is State.IDLE
    machine.receive(decode(START))
    assert machine.state is State.STREAMING


# The runtime's notices.

NOTICES: dict[str, Input] = {
    "refused": StreamRefused(Overloaded("full")),
    "refused_soft": StreamRefused(InvalidFormat("bad options")),
    "failed": StreamFailed(),
    "drain": DrainStarted(),
    "expired": DrainExpired(),
    "slow": OutboxFull(),
    "eof": EndOfInput(),
    "gone": Disconnected(),
    "crash": Crashed(),
}
INPUTS: dict[str, Input] = {
    **{k: decode(v) for k, v in MESSAGES.items()},
    **NOTICES,
    "finish": Finish(AUDIO),
    "steer": Steer("retune", reply={"type": "ok"}),
}


def test_every_sequence_of_messages_and_notices_keeps_the_invariants() -> None:
    """Whatever happens, a stream is opened only when none is open, every open stream is
    finished or aborted exactly once before the connection ends, nothing follows a close,
    and a closed connection answers only a crash."""
    for mode in (WEBSOCKET, GRPC):
        for seq in itertools.product(INPUTS, repeat=3):
            machine = ConnectionMachine(mode)
            open_ = False
            closed = False
            for name in seq:
                actions = machine.receive(INPUTS[name])
                if closed:
                    if name == "crash":
                        assert [type(a) for a in actions] == [Close], seq
                    else:
                        assert actions == [], seq
                    continue
                if name.startswith("refused") and open_:
                    open_ = False  # the driver had opened nothing: the refusal says so
                for action in actions:
                    assert not closed, (seq, actions)
                    if isinstance(action, OpenStream):
                        assert not open_, seq
                        open_ = True
                    elif isinstance(action, FinishStream | AbortStream):
                        open_ = False
                    elif isinstance(action, Feed | Finalize | SteerStream):
                        assert open_, seq
                    elif isinstance(action, Close):
                        closed = True
                if machine.state is State.CLOSED:
                    assert closed, (seq, actions)
                    assert not open_, seq
                if machine.state is State.IDLE:
                    assert not open_, seq


def started(mode: Mode = WEBSOCKET) -> ConnectionMachine:
    machine = ConnectionMachine(mode)
    machine.receive(decode(START))
    return machine


def test_a_refused_start_goes_back_to_idle_or_closes_for_overload() -> None:
    soft = started()
    assert soft.receive(StreamRefused(InvalidFormat("no"))) == [
        EmitError(ErrorCode.INVALID_FORMAT, "no")
    ]
    assert soft.state is State.IDLE
    hard = started()
    actions = hard.receive(StreamRefused(Overloaded("full")))
    assert actions == [
        EmitError(ErrorCode.OVERLOADED, "full"),
        Close(ErrorCode.OVERLOADED, "full"),
    ]
    down = started()
    actions = down.receive(StreamRefused(ShuttingDown("bye")))
    assert actions[-1] == Close(ErrorCode.SHUTTING_DOWN, "bye")


def test_a_refusal_by_a_stream_limit_keeps_its_reason_for_the_front_end() -> None:
    hard = started()
    assert hard.receive(StreamRefused(StreamLimit("quota"))) == [
        EmitError(ErrorCode.OVERLOADED, "quota", STREAM_LIMIT),
        Close(ErrorCode.OVERLOADED, "quota", reason=STREAM_LIMIT),
    ]
    one = started(GRPC)
    assert one.receive(StreamRefused(StreamLimit("quota"))) == [
        Close(ErrorCode.OVERLOADED, "quota", tell=True, reason=STREAM_LIMIT)
    ]


def test_grpc_ends_the_call_on_any_client_error_telling_it_once() -> None:
    machine = ConnectionMachine(GRPC)
    actions = machine.receive(decode(AUDIO))
    assert len(actions) == 1 and isinstance(actions[0], Close) and actions[0].tell
    assert actions[0].code is ErrorCode.NOT_STARTED and machine.state is State.CLOSED
    streaming = started(GRPC)
    actions = streaming.receive(decode(START))
    assert actions[0] == AbortStream("error")
    assert isinstance(actions[1], Close) and actions[1].code is ErrorCode.ALREADY_STARTED


def test_a_grpc_stop_or_end_of_input_finishes_and_ends_the_call() -> None:
    assert started(GRPC).receive(decode(STOP)) == [FinishStream(), Close()]
    assert started(GRPC).receive(EndOfInput()) == [FinishStream(), Close()]
    assert ConnectionMachine(GRPC).receive(EndOfInput()) == [Close()]


def test_draining_closes_idle_connections_and_lets_streams_run_until_it_expires() -> None:
    idle = ConnectionMachine(WEBSOCKET)
    assert idle.receive(DrainStarted()) == [
        Close(ErrorCode.SHUTTING_DOWN, idle_message(), tell=False)
    ]
    streaming = started()
    assert streaming.receive(DrainStarted()) == []
    assert streaming.receive(decode(AUDIO)) == [Feed(AUDIO)]
    # A stream that ends while draining ends its connection too.
    assert streaming.receive(decode(STOP)) == [
        FinishStream(),
        Close(ErrorCode.SHUTTING_DOWN, idle_message()),
    ]
    expiring = started()
    expiring.receive(DrainStarted())
    assert expiring.receive(DrainExpired()) == [
        FinishStream(),
        Close(ErrorCode.SHUTTING_DOWN, idle_message()),
    ]
    # gRPC tells the reason in-band too when no stream is open.
    [close] = ConnectionMachine(GRPC).receive(DrainStarted())
    assert isinstance(close, Close) and close.tell


def idle_message() -> str:
    from streamer.protocol.connection import SHUTTING_DOWN_MESSAGE

    return SHUTTING_DOWN_MESSAGE


def test_faults_abort_the_stream_and_close_with_internal_error() -> None:
    for notice in (StreamFailed(), Crashed()):
        actions = started().receive(notice)
        assert actions[0] == AbortStream("error")
        assert isinstance(actions[1], Close) and actions[1].code is ErrorCode.INTERNAL_ERROR
        assert actions[1].tell
    # A crash while ending (flushing the last stream) still closes with internal_error.
    closing = started()
    closing.receive(decode(STOP_CLOSE))
    [close] = closing.receive(Crashed())
    assert isinstance(close, Close) and close.code is ErrorCode.INTERNAL_ERROR


def test_a_slow_consumer_or_a_lost_peer_aborts_the_stream() -> None:
    assert started().receive(OutboxFull())[0] == AbortStream("slow_consumer")
    assert started().receive(Disconnected()) == [AbortStream("disconnected"), Close(send=False)]


def test_where_results_have_other_readers_a_lost_peers_stream_is_finished() -> None:
    from streamer.protocol.connection import WEBSOCKET_FINISHING

    machine = ConnectionMachine(WEBSOCKET_FINISHING)
    machine.receive(decode(START))
    assert machine.receive(Disconnected()) == [FinishStream(), Close(send=False)]
    assert machine.state is State.CLOSED
    idle = ConnectionMachine(WEBSOCKET_FINISHING)  # no stream: nothing to finish
    assert idle.receive(Disconnected()) == [AbortStream("disconnected"), Close(send=False)]


def test_a_tick_past_the_idle_deadline_ends_the_connection() -> None:
    from streamer.protocol.connection import Limits
    from streamer.protocol.inputs import Tick

    machine = ConnectionMachine(WEBSOCKET, Limits(idle_seconds=10), now=100.0)
    assert machine.deadline() == 110.0
    assert machine.receive(Tick(), now=105.0) == []  # early: nothing to do
    machine.receive(decode(START), now=108.0)
    assert machine.deadline() == 118.0  # a message moves the deadline
    assert machine.receive(Tick(), now=111.0) == []
    actions = machine.receive(Tick(), now=118.0)
    assert [type(a) for a in actions] == [EmitError, FinishStream, Close]
    assert actions[0] == EmitError(ErrorCode.IDLE_TIMEOUT, "no audio or keepalive for 10 s")
    assert machine.state is State.CLOSED and machine.deadline() is None
    assert ConnectionMachine().deadline() is None  # no limit, no deadline


def test_time_the_server_spends_on_the_stream_is_not_the_clients_idle_time() -> None:
    from streamer.protocol.connection import Limits
    from streamer.protocol.inputs import Tick

    machine = ConnectionMachine(WEBSOCKET, Limits(idle_seconds=10), now=100.0)
    machine.receive(decode(START), now=100.0)
    machine.receive(Audio(AUDIO), now=101.0)
    machine.busy_until(130.0)  # the feed waited on a busy stream (backpressure)
    assert machine.deadline() == 140.0
    assert machine.receive(Tick(), now=131.0) == []
    assert machine.receive(decode(STOP), now=132.0) == [FinishStream()]
    machine.busy_until(150.0)  # the stopped stream's last results took this long
    assert machine.state is State.IDLE and machine.deadline() == 160.0
    machine.busy_until(120.0)  # never back in time
    assert machine.deadline() == 160.0


# Limits of a stream's length and of the message rate.


def test_audio_past_max_audio_seconds_is_cut_then_the_stream_expires() -> None:
    from streamer.protocol.connection import Limits

    machine = ConnectionMachine(WEBSOCKET, Limits(max_audio_seconds=1.0))
    machine.receive(decode(START))  # 16 kHz mono s16: 32,000 bytes a second
    assert machine.receive(Audio(bytes(20_000))) == [Feed(bytes(20_000))]
    actions = machine.receive(Audio(bytes(20_001)))
    assert actions[0] == Feed(bytes(12_000))  # up to the limit, whole frames only
    assert [type(a) for a in actions[1:]] == [FinishStream, EmitError, Close]
    assert actions[2] == EmitError(
        ErrorCode.SESSION_EXPIRED, "the stream reached its limit of 1 s of audio"
    )
    assert actions[3] == Close(ErrorCode.SESSION_EXPIRED, actions[2].message)
    assert machine.state is State.CLOSED
    assert machine.receive(Audio(AUDIO)) == []


def test_audio_up_to_the_limit_exactly_is_taken_and_the_next_message_expires() -> None:
    from streamer.protocol.connection import Limits

    machine = ConnectionMachine(GRPC, Limits(max_audio_seconds=0.5))
    machine.receive(decode(START))
    assert machine.receive(Audio(bytes(16_000))) == [Feed(bytes(16_000))]
    assert machine.state is State.STREAMING
    assert [type(a) for a in machine.receive(Audio(AUDIO))] == [FinishStream, EmitError, Close]


def test_a_stream_open_past_max_wall_seconds_expires_on_the_tick() -> None:
    from streamer.protocol.connection import Limits
    from streamer.protocol.inputs import Tick

    machine = ConnectionMachine(WEBSOCKET, Limits(idle_seconds=10, max_wall_seconds=3), 100.0)
    assert machine.deadline() == 110.0  # idle: the wall clock starts with a stream
    machine.receive(decode(START), now=101.0)
    assert machine.deadline() == 104.0
    machine.receive(Audio(AUDIO), now=103.5)
    assert machine.receive(Tick(), now=103.9) == []
    actions = machine.receive(Tick(), now=104.0)
    assert [type(a) for a in actions] == [FinishStream, EmitError, Close]
    assert actions[1] == EmitError(ErrorCode.SESSION_EXPIRED, "the stream reached its limit of 3 s")
    assert machine.deadline() is None


def test_a_message_flood_past_the_rate_ends_the_connection() -> None:
    from streamer.protocol.connection import Limits

    machine = ConnectionMachine(WEBSOCKET, Limits(max_messages_per_second=10), 0.0)
    machine.receive(decode(START), now=0.0)
    for i in range(9):  # a second's worth at once: the burst
        assert machine.receive(decode(KEEPALIVE), now=0.001 * i) == []
    actions = machine.receive(decode(KEEPALIVE), now=0.01)
    assert actions == [
        AbortStream("error"),
        EmitError(ErrorCode.RATE_LIMITED, "more than 10 messages a second"),
        Close(ErrorCode.RATE_LIMITED, "more than 10 messages a second"),
    ]
    assert machine.state is State.CLOSED


def test_messages_at_the_rate_go_on_and_long_audio_messages_are_not_counted() -> None:
    from streamer.protocol.connection import Limits

    machine = ConnectionMachine(GRPC, Limits(max_messages_per_second=8), 0.0)
    machine.receive(decode(START), now=0.0)
    for i in range(80):  # eight a second for ten seconds
        assert machine.receive(decode(KEEPALIVE), now=0.125 * (i + 1)) == []
    for _ in range(1000):  # 1/8 s of audio each, all at once: paced by backpressure instead
        assert machine.receive(Audio(bytes(4000)), now=10.0) == [Feed(bytes(4000))]
    for _ in range(7):  # shorter audio counts like any message: the burst's rest
        assert machine.receive(Audio(bytes(3998)), now=10.0) == [Feed(bytes(3998))]
    actions = machine.receive(Audio(bytes(2)), now=10.0)
    assert actions == [
        AbortStream("error"),
        Close(ErrorCode.RATE_LIMITED, "more than 8 messages a second", tell=True),
    ]


# Sessions that reconfigure their one stream (OpenAI Realtime).


def _restart(**fields: object) -> Restart:
    request = decode(START)
    assert isinstance(request, StartRequest)
    return Restart(request, **fields)  # type: ignore[arg-type]


def test_a_restart_opens_the_stream_then_sends_its_reply() -> None:
    m = ConnectionMachine(WEBSOCKET)
    restart = _restart(route="simple", chunk_seconds=30.0, reply={"type": "created"})
    assert m.receive(restart) == [
        OpenStream(restart.request, "simple", 30.0),
        Send({"type": "created"}),
    ]
    assert m.state is State.STREAMING


@pytest.mark.parametrize(
    ("flush", "end"), [(True, FinishStream()), (False, AbortStream("restarted"))]
)
def test_a_restart_while_streaming_ends_the_open_stream_first(flush: bool, end: Action) -> None:
    m = ConnectionMachine(WEBSOCKET)
    m.receive(_restart())
    restart = _restart(flush=flush)
    assert m.receive(restart) == [end, OpenStream(restart.request)]
    assert m.state is State.STREAMING and m.streams_started == 2


def test_a_commit_says_so_then_feeds_and_finalizes() -> None:
    m = ConnectionMachine(WEBSOCKET)
    m.receive(_restart())
    assert m.receive(Commit(AUDIO, {"type": "committed"})) == [
        Send({"type": "committed"}),
        Feed(AUDIO),
        Finalize(),
    ]
    assert m.receive(Commit(b"")) == [Finalize()]


def test_a_commit_with_no_stream_is_not_started_and_a_reply_is_just_sent() -> None:
    m = ConnectionMachine(WEBSOCKET)
    (error,) = m.receive(Commit(AUDIO))
    assert isinstance(error, EmitError) and error.code is ErrorCode.NOT_STARTED
    assert m.receive(Reply({"type": "error"})) == [Send({"type": "error"})]
    assert m.state is State.IDLE


def test_a_steer_reaches_the_open_stream_then_its_reply_is_sent() -> None:
    m = started()
    assert m.receive(Steer("retune", reply={"type": "ok"})) == [
        SteerStream("retune"),
        Send({"type": "ok"}),
    ]
    assert m.receive(Steer("end turn")) == [SteerStream("end turn")]
    assert m.state is State.STREAMING
    idle = ConnectionMachine(WEBSOCKET)
    (error,) = idle.receive(Steer("retune"))
    assert isinstance(error, EmitError) and error.code is ErrorCode.NOT_STARTED


def test_a_refused_restart_leaves_the_session_idle_and_an_overload_closes_it() -> None:
    m = ConnectionMachine(WEBSOCKET)
    m.receive(_restart())
    m.receive(_restart())
    actions = m.receive(StreamRefused(Overloaded("full")))
    assert actions[-1] == Close(ErrorCode.OVERLOADED, "full")


def test_committed_audio_counts_against_max_audio_seconds() -> None:
    from streamer.protocol.connection import Limits

    machine = ConnectionMachine(WEBSOCKET, Limits(max_audio_seconds=1.0))
    machine.receive(_restart())
    assert machine.receive(Commit(bytes(30_000))) == [Feed(bytes(30_000)), Finalize()]
    actions = machine.receive(Commit(bytes(4_000)))
    assert [type(a) for a in actions] == [Feed, FinishStream, EmitError, Close]
    assert actions[0] == Feed(bytes(2_000)) and machine.state is State.CLOSED


def test_a_finish_feeds_the_last_audio_then_ends_the_stream_and_the_connection() -> None:
    m = started()
    assert m.receive(Finish(AUDIO)) == [Feed(AUDIO), FinishStream(), Close()]
    assert m.state is State.CLOSED
    m = started()
    assert m.receive(Finish()) == [FinishStream(), Close()]


def test_a_finish_with_no_stream_just_closes() -> None:
    m = ConnectionMachine(WEBSOCKET)
    assert m.receive(Finish(AUDIO)) == [Close()]
    assert m.state is State.CLOSED


# The table itself: every row names its next state, and every row is reachable.


def test_each_kinds_rules_end_with_one_that_always_applies() -> None:
    for key, rules in RULES.items():
        *guarded, last = rules
        assert last.when is None, key
        assert all(rule.when is not None for rule in guarded), key


ROW_INPUTS: dict[str, tuple[Input, float | None]] = {
    **{name: (event, None) for name, event in INPUTS.items()},
    "tick": (Tick(), None),
    "tick_late": (Tick(), 1000.0),
    "rate": (RateExceeded(), None),
    "restart": (_restart(reply={"type": "created"}), None),
    "restart_abort": (_restart(flush=False), None),
    "commit": (Commit(AUDIO, {"type": "committed"}), None),
    "commit_empty": (Commit(b""), None),
    "reply": (Reply({"type": "ack"}), None),
    "finish_empty": (Finish(), None),
    "bad_json": (decode("{not json"), None),
}


def test_every_rule_is_taken_and_the_machine_goes_where_it_names() -> None:
    """Every sequence of three inputs, in every mode, with and without limits: the state
    after an input is the next state of the rule it took, and every rule is taken."""
    taken: set[int] = set()
    limits = (
        Limits(),
        Limits(idle_seconds=10, max_wall_seconds=5, max_audio_seconds=0.0001),
        Limits(idle_seconds=10),
    )
    for mode, limit in itertools.product((WEBSOCKET, WEBSOCKET_FINISHING, GRPC), limits):
        for seq in itertools.product(ROW_INPUTS, repeat=3):
            machine = ConnectionMachine(mode, limit)
            for name in seq:
                event, now = ROW_INPUTS[name]
                machine.rule = None
                machine.receive(event, now)
                if machine.rule is not None:
                    taken.add(id(machine.rule))
                    assert machine.state is machine.rule.next, (mode, limit, seq)
    missing = [
        (state.value, kind.__name__, i)
        for (state, kind), rules in RULES.items()
        for i, rule in enumerate(rules)
        if id(rule) not in taken
    ]
    assert missing == []


def test_the_architecture_draws_the_state_diagram_the_table_gives() -> None:
    """``docs/architecture.md`` holds the diagram ``state_diagram()`` draws; after a change
    to the table, paste its output there."""
    text = (Path(__file__).parents[3] / "docs" / "architecture.md").read_text()
    drawn = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert drawn == state_diagram()
