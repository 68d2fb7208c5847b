"""The ``/v3/ws`` codec: AssemblyAI's query, messages in and out, without a socket; its
messages checked against the real clients' own models (the ``assemblyai`` SDK's and
Pipecat's, in their environments); then over the real connection machine and pipeline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.codecs import assemblyai
from streamer.codecs.assemblyai import (
    CHUNK_DURATION,
    INPUT_VALIDATION,
    QueryError,
    StreamingCodec,
    codec_for,
    parse_query,
    unformatted,
)
from streamer.errors import ErrorCode, InvalidJson, InvalidMessage
from streamer.events import (
    Done,
    Finalized,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
    Turn,
    TurnWord,
)
from streamer.inference.model import TestModel
from streamer.pipeline import Route
from streamer.protocol.inputs import Audio, Finish, Invalid, Steer
from streamer.protocol.messages import (
    KeepaliveRequest,
    StopRequest,
    TurnDetection,
)
from streamer.testing import ManualClock, Pause, codec_decoder, run_connection, running_services
from streamer.turn.stage import ForceEnd

ROOT = Path(__file__).resolve().parents[3]
VENVS = ROOT / ".venv-clients"

WORDS = (TurnWord(" Hello,", 0.9, 0.5, 0.8), TurnWord(" World!", 0.8, 0.9, 1.25))


def turn(event: str, text: str = " Hello, World!", confidence: float = 0.0, index: int = 0) -> Turn:
    words = WORDS if text == " Hello, World!" else WORDS[:1] if text else ()
    return Turn(0, event, index, text, words, 0.4, 1.4, confidence)


SAID = turn("EndOfTurn", confidence=0.93)


def codec(*items: tuple[str, str], **kwargs: Any) -> StreamingCodec:
    return StreamingCodec(
        parse_query(items), wall_clock=lambda: 1000.0, clock=lambda: 5.0, **kwargs
    )


def ready() -> Ready:
    return Ready("0f8fad5b-d9cb-469f-a165-70867728950e", "segmented", "whisper", 16000, 1)


# The query.


def test_a_full_query_is_read_and_json_array_values_are_taken() -> None:
    params = parse_query(
        [
            ("sample_rate", "8000"),
            ("encoding", "pcm_mulaw"),
            ("speech_model", "universal-streaming-english"),
            ("format_turns", "true"),
            ("end_of_turn_confidence_threshold", "0.4"),
            ("min_end_of_turn_silence_when_confident", "160"),
            ("max_turn_silence", "[1200]"),
            ("keyterms_prompt", json.dumps(["Americans", "country"])),
            ("inactivity_timeout", "30"),
            ("language_detection", "true"),
            ("something_new", "x"),
        ]
    )
    assert params.sample_rate == 8000 and params.encoding == "pcm_mulaw"
    assert params.speech_model == "universal-streaming-english" and params.format_turns
    assert params.end_of_turn_confidence_threshold == 0.4
    assert params.min_turn_silence == 160 and params.max_turn_silence == 1200
    assert params.keyterms_prompt == ("Americans", "country")
    assert params.inactivity_timeout == 30 and params.ignored == ("language_detection",)
    start = params.start_request()
    assert start.format.encoding == "mulaw" and start.format.sample_rate == 8000
    assert start.word_times and not start.segments
    # The threshold and the pause within the turn detection's bounds; the early end below.
    assert start.turn_detection == TurnDetection(
        eot_threshold=0.5, eager_eot_threshold=0.3, eot_timeout_ms=1200, min_end_silence_ms=160
    )


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], (0.7, 0.5, 1280)),
        (
            [("end_of_turn_confidence_threshold", "1.0"), ("max_turn_silence", "100")],
            (0.9, 0.7, 500),
        ),
        (
            [("end_of_turn_confidence_threshold", "0.8"), ("max_turn_silence", "60000")],
            (0.8, 0.6, 10000),
        ),
    ],
)
def test_turn_detection_from_assemblyais_parameters(
    items: list[tuple[str, str]], expected: tuple[float, float, int]
) -> None:
    turns = parse_query(items).turn_detection()
    assert (turns.eot_threshold, turns.eager_eot_threshold, turns.eot_timeout_ms) == expected


def test_the_defaults_are_assemblyais() -> None:
    params = parse_query([])
    assert (params.sample_rate, params.encoding, params.format_turns) == (16000, "pcm_s16le", False)
    assert parse_query([("min_turn_silence", "100")]).min_turn_silence == 100


@pytest.mark.parametrize(
    ("items", "names"),
    [
        ([("encoding", "opus")], "opus"),
        ([("encoding", "ogg_opus")], "ogg_opus"),
        ([("encoding", "pcm_f32le")], "pcm_f32le"),
        ([("sample_rate", "0")], "sample_rate"),
        ([("sample_rate", "16k")], "sample_rate"),
        ([("format_turns", "maybe")], "format_turns"),
        ([("keyterms_prompt", "Americans")], "keyterms_prompt"),
        ([("end_of_turn_confidence_threshold", "2")], "end_of_turn_confidence_threshold"),
        ([("max_turn_silence", "nan")], "max_turn_silence"),
        ([("inactivity_timeout", "4")], "inactivity_timeout"),
        ([("inactivity_timeout", "3601")], "inactivity_timeout"),
        ([("inactivity_timeout", "7.5")], "inactivity_timeout"),
    ],
)
def test_a_malformed_query_is_refused_once_open_with_3006(
    items: list[tuple[str, str]], names: str
) -> None:
    with pytest.raises(QueryError, match=names):
        parse_query(items)
    c = codec_for(items)
    (opening,) = c.opening
    assert isinstance(opening, Invalid) and names in opening.error.message
    (error,) = c.messages(StreamError(opening.error.code, opening.error.message))
    assert error == {"type": "Error", "error_code": 3006, "error": opening.error.message}
    assert c.close_code(ErrorCode(opening.error.code)) == INPUT_VALIDATION


# Messages in.


def test_control_messages() -> None:
    c = codec()
    assert c.decode_text('{"type": "ForceEndpoint"}') == Steer(ForceEnd())
    assert c.decode_text('{"type": "KeepAlive"}') == KeepaliveRequest(request="keepalive")
    update = '{"type": "UpdateConfiguration", "format_turns": true, "max_turn_silence": 900}'
    assert c.decode_text(update) == Steer(
        TurnDetection(eot_threshold=0.7, eager_eot_threshold=0.5, eot_timeout_ms=900)
    )
    assert c.updates == {"format_turns": True, "max_turn_silence": 900}
    # Nothing the stream uses changed: nothing to hand it.
    assert c.decode_text(update) == KeepaliveRequest(request="keepalive")
    assert not c.terminated
    assert c.decode_text('{"type": "Terminate"}') == StopRequest(request="stop", disconnect=True)
    assert c.terminated


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", InvalidJson),
        ("[1]", InvalidMessage),
        ('{"type": "Finalize"}', InvalidMessage),
        ('{"type": "UpdateConfiguration", "format_turns": "yes"}', InvalidMessage),
    ],
)
def test_bad_messages_are_3006(text: str, error: type[Exception]) -> None:
    c = codec()
    with pytest.raises(error) as raised:
        c.decode_text(text)
    assert c.close_code(raised.value.code) == INPUT_VALIDATION  # type: ignore[attr-defined]


def test_chunks_between_50_and_1000_ms_are_audio() -> None:
    c = codec()  # 16 kHz s16le: 32 bytes a millisecond
    for ms in (50, 100, 1000):
        assert c.decode_bytes(b"\0" * 32 * ms) == Audio(b"\0" * 32 * ms)
    mulaw = codec(("encoding", "pcm_mulaw"), ("sample_rate", "8000"))
    assert mulaw.decode_bytes(b"\xff" * 400) == Audio(b"\xff" * 400)  # 50 ms


def test_a_chunk_over_the_limit_is_3007() -> None:
    c = codec()
    with pytest.raises(InvalidMessage, match="2000 ms is too long") as raised:
        c.decode_bytes(b"\0" * 32 * 2000)
    assert c.close_code(raised.value.code) == CHUNK_DURATION
    (error,) = c.messages(StreamError(raised.value.code, raised.value.message))
    assert error["error_code"] == CHUNK_DURATION


def test_a_short_chunk_is_the_last_before_terminate_or_3007() -> None:
    c = codec()
    assert c.decode_bytes(b"\0" * 320) == KeepaliveRequest(request="keepalive")  # 10 ms: held
    assert c.decode_text('{"type": "Terminate"}') == Finish(b"\0" * 320)
    c = codec()
    c.decode_bytes(b"\0" * 320)
    with pytest.raises(InvalidMessage, match="10 ms is too short") as raised:
        c.decode_bytes(b"\0" * 3200)
    assert c.close_code(raised.value.code) == CHUNK_DURATION
    c = codec()
    c.decode_bytes(b"\0" * 320)
    with pytest.raises(InvalidMessage, match="too short"):
        c.decode_text('{"type": "ForceEndpoint"}')


def test_the_chunk_limits_are_settings() -> None:
    c = codec(min_chunk_ms=10.0, max_chunk_ms=3000.0)
    assert c.decode_bytes(b"\0" * 320) == Audio(b"\0" * 320)
    assert c.decode_bytes(b"\0" * 32 * 2000) == Audio(b"\0" * 32 * 2000)


# Messages out.


def test_begin_the_start_of_a_turn_and_nothing_for_the_vads_own_events() -> None:
    c = codec()
    (begin,) = c.messages(ready())
    assert begin == {
        "type": "Begin",
        "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "expires_at": 1000 + 3 * 3600,
    }
    start = Turn(0, "StartOfTurn", 0, "", (), 1.2346, 1.2346, 0.0)
    assert c.messages(start) == [{"type": "SpeechStarted", "timestamp": 1235}]
    assert c.messages(SpeechStarted(0, 1.2)) == []
    assert c.messages(SpeechEnded(0, 2.0)) == []
    assert c.messages(Finalized(0, 2.0, 1)) == []
    assert c.messages(SegmentResult(0, 0.4, 1.4, True, {"text": "Hello"})) == []
    assert codec(max_session_seconds=60).messages(ready())[0]["expires_at"] == 1060
    (asked,) = codec(("speech_model", "u3-rt-pro")).messages(ready())
    assert asked["configuration"] == {"model": "u3-rt-pro"}


def test_partials_then_the_end_of_turn_unformatted_then_formatted() -> None:
    c = codec(("format_turns", "true"))
    assert c.messages(turn("Update", "")) == []  # no words yet: nothing to say
    (partial,) = c.messages(turn("Update", " Hello,", 0.12))
    assert partial == {
        "type": "Turn",
        "turn_order": 0,
        "turn_is_formatted": False,
        "end_of_turn": False,
        "transcript": "hello",
        "end_of_turn_confidence": 0.12,
        "words": [
            {"start": 500, "end": 800, "confidence": 0.9, "text": "hello", "word_is_final": False}
        ],
        "utterance": "",
    }
    raw, formatted = c.messages(SAID)
    assert raw["turn_order"] == formatted["turn_order"] == 0
    assert (raw["end_of_turn"], raw["turn_is_formatted"]) == (True, False)
    assert (formatted["end_of_turn"], formatted["turn_is_formatted"]) == (True, True)
    assert raw["transcript"] == "hello world" and formatted["transcript"] == "Hello, World!"
    assert raw["utterance"] == "Hello, World!" and formatted["utterance"] == ""
    assert raw["end_of_turn_confidence"] == formatted["end_of_turn_confidence"] == 0.93
    assert formatted["words"] == [
        {"start": 500, "end": 800, "confidence": 0.9, "text": "Hello,", "word_is_final": True},
        {"start": 900, "end": 1250, "confidence": 0.8, "text": "World!", "word_is_final": True},
    ]
    assert [w["text"] for w in raw["words"]] == ["hello", "world"]
    (after,) = c.messages(turn("Update", " Hello,", index=1))
    assert after["turn_order"] == 1


def test_the_early_end_fills_the_utterance_and_the_end_then_does_not() -> None:
    c = codec()
    (eager,) = c.messages(turn("EagerEndOfTurn", confidence=0.55))
    assert not eager["end_of_turn"] and eager["utterance"] == "Hello, World!"
    assert eager["end_of_turn_confidence"] == 0.55
    assert c.messages(turn("TurnResumed")) == []
    (end,) = c.messages(SAID)
    assert end["end_of_turn"] and end["utterance"] == ""
    (next_end,) = c.messages(turn("EndOfTurn", index=1))
    assert next_end["turn_order"] == 1 and next_end["utterance"] == "Hello, World!"


def test_a_turn_that_ends_without_words_sends_nothing_and_keeps_its_order() -> None:
    c = codec()
    assert c.messages(turn("EndOfTurn", "")) == []
    assert c.messages(SAID)[0]["turn_order"] == 0


def test_without_format_turns_one_unformatted_end_and_u3_models_format_their_own() -> None:
    (only,) = codec().messages(SAID)
    assert only["end_of_turn"] and not only["turn_is_formatted"]
    assert only["transcript"] == "hello world"
    (u3,) = codec(("speech_model", "u3-rt-pro")).messages(SAID)
    assert u3["turn_is_formatted"] and u3["transcript"] == "Hello, World!"
    assert u3["utterance"] == "Hello, World!"


def test_update_configuration_turns_formatting_on_live() -> None:
    c = codec()
    c.decode_text('{"type": "UpdateConfiguration", "format_turns": true}')
    assert [m["turn_is_formatted"] for m in c.messages(SAID)] == [False, True]


def test_inactivity_timeout_counts_seconds_without_audio() -> None:
    clock = ManualClock()
    c = StreamingCodec(parse_query([("inactivity_timeout", "5")]), clock=clock)
    assert c.timeout() == 5.0
    clock.now += 3
    assert c.timeout() == 2.0
    c.decode_bytes(bytes(3200))  # audio: the five seconds start again
    assert c.timeout() == 5.0
    clock.now += 4
    c.decode_text('{"type": "KeepAlive"}')  # not audio: the time runs on
    assert c.timeout() == 1.0
    clock.now += 1
    assert c.timeout() == 0.0
    # Ended as AssemblyAI ends a session: as Terminate, so Termination, then 1000.
    assert c.timed_out() == StopRequest(request="stop", disconnect=True)
    assert c.inactive and c.timeout() is None
    (termination,) = c.messages(Done(audio_seconds=0.1))
    assert termination["type"] == "Termination" and c.close_code(None) == 1000


def test_the_servers_time_on_a_message_is_not_the_clients_inactivity() -> None:
    clock = ManualClock()
    c = StreamingCodec(parse_query([("inactivity_timeout", "5")]), clock=clock)
    c.decode_bytes(bytes(3200))
    clock.now += 4  # the server was busy with that audio before it listened again
    assert c.timeout() == 5.0
    clock.now += 2  # then waited: the client's time
    assert c.timeout() == 3.0


def test_a_short_chunk_held_when_the_session_times_out_is_taken() -> None:
    clock = ManualClock()
    c = StreamingCodec(parse_query([("inactivity_timeout", "5")]), clock=clock)
    assert isinstance(c.decode_bytes(bytes(320)), KeepaliveRequest)
    assert c.timed_out() == Finish(bytes(320))


def test_without_inactivity_timeout_there_is_no_limit() -> None:
    assert codec().timeout() is None
    assert codec_for([("inactivity_timeout", "2")]).timeout() is None  # refused instead


def test_failed_spans_send_no_error() -> None:
    c = codec()
    assert c.messages(StreamError("model_error", "failed", 0, 0.0, 1.0)) == []
    assert c.turn.order == 0


def test_termination_answers_terminate_only() -> None:
    c = codec()
    assert c.messages(Done(audio_seconds=11.0)) == []
    c.decode_text('{"type": "Terminate"}')
    (termination,) = c.messages(Done(audio_seconds=10.6))
    assert termination == {
        "type": "Termination",
        "audio_duration_seconds": 11,
        "session_duration_seconds": 0,
    }


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, 1000),
        (ErrorCode.INTERNAL_ERROR, 3005),
        (ErrorCode.INVALID_JSON, 3006),
        (ErrorCode.INVALID_MESSAGE, 3006),
        (ErrorCode.SESSION_EXPIRED, 3008),
        (ErrorCode.OVERLOADED, 1013),
        (ErrorCode.SHUTTING_DOWN, 1001),
    ],
)
def test_error_and_close_codes(code: ErrorCode | None, expected: int) -> None:
    c = codec()
    assert c.close_code(code) == expected
    if code is not None:
        (error,) = c.messages(StreamError(code, "why"))
        assert error == {"type": "Error", "error_code": expected, "error": "why"}


def test_a_concurrent_stream_limit_is_3009_and_a_busy_server_1013() -> None:
    limited = codec()
    (error,) = limited.messages(StreamError(ErrorCode.OVERLOADED, "quota", reason="stream_limit"))
    assert error == {"type": "Error", "error_code": 3009, "error": "quota"}
    assert limited.close_code(ErrorCode.OVERLOADED) == 3009
    busy = codec()
    (error,) = busy.messages(StreamError(ErrorCode.OVERLOADED, "behind"))
    assert error["error_code"] == 1013 and busy.close_code(ErrorCode.OVERLOADED) == 1013


def test_unformatted_text() -> None:
    assert unformatted("  Don't STOP, it's 5 o'clock!  ") == "don't stop it's 5 o'clock"
    assert unformatted("'quoted' - dash") == "quoted dash"


# The real clients' models.


def _sample_messages() -> list[dict[str, Any]]:
    c = codec(("format_turns", "true"), ("speech_model", "universal-streaming-english"))
    sent = c.messages(ready()) + c.messages(turn("StartOfTurn", ""))
    sent += c.messages(turn("Update", " Hello,")) + c.messages(turn("EagerEndOfTurn"))
    sent += c.messages(SAID)
    c.decode_text('{"type": "Terminate"}')
    return sent + c.messages(Done(audio_seconds=1.5))


SDK_CHECK = """
import json, sys
from assemblyai.streaming.v3 import models
kinds = {"Begin": models.BeginEvent, "Turn": models.TurnEvent,
         "SpeechStarted": models.SpeechStartedEvent, "Termination": models.TerminationEvent,
         "Error": models.ErrorEvent}
for m in json.load(sys.stdin):
    kinds[m["type"]].model_validate(m)
print("ok")
"""

PIPECAT_CHECK = """
import json, sys
from pipecat.services.assemblyai.stt import AssemblyAISTTService
from pipecat.services.assemblyai import models
for m in json.load(sys.stdin):
    AssemblyAISTTService._parse_message(None, m)
print("ok")
"""


@pytest.mark.parametrize(
    ("client", "check"), [("assemblyai", SDK_CHECK), ("pipecat", PIPECAT_CHECK)]
)
def test_every_message_parses_in_the_clients_strict_models(client: str, check: str) -> None:
    python = VENVS / client / "bin" / "python"
    if not python.exists():
        pytest.skip(f"the {client} client environment (.venv-clients, `make clients`) is absent")
    messages = _sample_messages()
    assert {m["type"] for m in messages} == {"Begin", "SpeechStarted", "Turn", "Termination"}
    done = subprocess.run(
        [str(python), "-c", check],
        input=json.dumps(messages),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# Over the real machine and pipeline (the speedy test model, which gives no text).


async def _session(c: StreamingCodec, inbound: list[Any]) -> tuple[list[dict[str, Any]], int]:
    async with running_services(model=TestModel.speedy()) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [*c.opening, *inbound],
            decode=codec_decoder(c),
            encode=c.encode,
            mode=assemblyai.MODE,
            mark_finalize=True,
        )
    assert outcome.close is not None
    sent = [json.loads(frame) for frames in outcome.sent for frame in frames]
    return sent, c.close_code(outcome.close.code)


def _tone(seconds: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


async def test_a_session_begins_and_terminate_gives_termination_and_1000() -> None:
    audio = _tone(1.0)
    chunks = [audio[i : i + 3200] for i in range(0, len(audio), 3200)]  # 100 ms
    sent, close = await _session(
        codec(), [*chunks, '{"type": "ForceEndpoint"}', Pause(0.05), '{"type": "Terminate"}']
    )
    assert sent[0]["type"] == "Begin" and sent[-1]["type"] == "Termination"
    assert sent[-1]["audio_duration_seconds"] == 1 and close == 1000
    assert {m["type"] for m in sent} <= {"Begin", "SpeechStarted", "Turn", "Termination"}


async def test_a_chunk_too_short_mid_stream_ends_the_session_with_3007() -> None:
    sent, close = await _session(codec(), [_tone(0.1), _tone(0.01), _tone(0.1)])
    assert sent[0]["type"] == "Begin"
    assert sent[-1]["type"] == "Error" and sent[-1]["error_code"] == CHUNK_DURATION
    assert close == CHUNK_DURATION
    assert not [m for m in sent if m["type"] == "Termination"]


async def test_a_bad_query_is_told_after_the_upgrade_with_3006() -> None:
    c = codec_for([("encoding", "opus")])
    sent, close = await _session(c, [_tone(0.1)])
    assert [m["type"] for m in sent] == ["Error"] and close == INPUT_VALIDATION
    assert "opus" in sent[0]["error"]


async def test_an_unknown_message_ends_the_session_with_3006() -> None:
    sent, close = await _session(codec(), [_tone(0.1), '{"type": "Nope"}', _tone(0.1)])
    assert sent[-1] == {"type": "Error", "error_code": 3006, "error": sent[-1]["error"]}
    assert "Nope" in sent[-1]["error"] and close == 3006
