"""The ``/v2/listen`` (Deepgram Flux) codec: the query, messages in and out, without a
socket; and its messages read by the real ``deepgram-sdk`` models in the client
environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streamer.codecs.deepgram_flux import FluxCodec, close_code, parse_query
from streamer.errors import BadHandshake, ErrorCode, InvalidJson, InvalidMessage
from streamer.events import (
    Done,
    Ready,
    SegmentResult,
    SpeechStarted,
    StreamError,
    Turn,
    TurnWord,
)
from streamer.protocol.inputs import Audio, Reply, Steer
from streamer.protocol.messages import KeepaliveRequest, StartRequest, StopRequest, TurnDetection
from streamer.turn.stage import ForceEnd

ROOT = Path(__file__).resolve().parents[3]
DEEPGRAM_PYTHON = ROOT / ".venv-clients" / "deepgram" / "bin" / "python"
BASE = [("model", "flux-general-en"), ("encoding", "linear16"), ("sample_rate", "16000")]


def codec(*items: tuple[str, str]) -> FluxCodec:
    return FluxCodec(parse_query([*BASE, *items]))


def ready(c: FluxCodec) -> dict[str, Any]:
    [connected] = c.messages(Ready("req-1", "segmented", "whisper-tiny.en", 16000, 1))
    return connected


def turn(event: str, index: int = 0, trigger: str | None = None) -> Turn:
    words = (TurnWord("Hello", 0.91, 0.5, 0.8), TurnWord("there.", 0.88, 0.8, 1.1))
    return Turn(0, event, index, "Hello there.", words, 0.4, 1.1, 0.81, trigger)


# The query.


def test_the_defaults_are_fluxs() -> None:
    params = parse_query(BASE)
    assert params.model == "flux-general-en"
    assert params.turns == TurnDetection(eot_threshold=0.7, eot_timeout_ms=5000)
    assert params.turns.eager_eot_threshold is None
    start = FluxCodec(params).opening[0]
    assert isinstance(start, StartRequest)
    assert start.turn_detection == params.turns
    assert start.word_times
    assert start.format.to_audio_format().channels == 1


def test_every_parameter_flux_takes_is_read_and_unknown_ones_are_ignored() -> None:
    params = parse_query(
        [
            ("model", "flux-general-multi"),
            ("encoding", "mulaw"),
            ("sample_rate", "8000"),
            ("eot_threshold", "0.8"),
            ("eager_eot_threshold", "0.5"),
            ("eot_timeout_ms", "3000"),
            ("keyterm", "Deepgram"),
            ("keyterm", "Flux"),
            ("tag", "a"),
            ("tag", "b"),
            ("mip_opt_out", "true"),
            ("language_hint", "en"),
            ("no_such_thing", "x"),
        ]
    )
    assert params.model == "flux-general-multi"
    assert params.audio_format().sample_rate == 8000
    assert params.turns == TurnDetection(
        eot_threshold=0.8, eager_eot_threshold=0.5, eot_timeout_ms=3000
    )
    assert params.keyterms == ("Deepgram", "Flux")
    assert params.tags == ("a", "b")
    assert params.mip_opt_out


@pytest.mark.parametrize("encoding", ["linear16", "linear32", "mulaw", "alaw"])
def test_each_raw_encoding_is_taken(encoding: str) -> None:
    params = parse_query([*BASE[:1], ("encoding", encoding), ("sample_rate", "8000")])
    assert params.encoding == encoding


@pytest.mark.parametrize(
    ("items", "parameter"),
    [
        ([("encoding", "linear16"), ("sample_rate", "16000")], "model"),
        ([("model", "nova-3"), ("encoding", "linear16"), ("sample_rate", "16000")], "model"),
        ([("model", "flux-general-en"), ("sample_rate", "16000")], "encoding"),
        ([*BASE[:1], ("encoding", "opus"), ("sample_rate", "16000")], "encoding"),
        ([*BASE[:1], ("encoding", "pcm"), ("sample_rate", "16000")], "encoding"),
        ([*BASE[:2]], "sample_rate"),
        ([*BASE[:2], ("sample_rate", "fast")], "sample_rate"),
        ([*BASE[:2], ("sample_rate", "0")], "sample_rate"),
        ([*BASE, ("eot_threshold", "0.95")], "eot_threshold"),
        ([*BASE, ("eot_threshold", "0.4")], "eot_threshold"),
        ([*BASE, ("eot_threshold", "nan")], "eot_threshold"),
        ([*BASE, ("eot_threshold", "high")], "eot_threshold"),
        ([*BASE, ("eager_eot_threshold", "0.2")], "eager_eot_threshold"),
        ([*BASE, ("eager_eot_threshold", "0.8")], "eager_eot_threshold"),  # above 0.7
        ([*BASE, ("eot_timeout_ms", "100")], "eot_timeout_ms"),
        ([*BASE, ("eot_timeout_ms", "20000")], "eot_timeout_ms"),
        ([*BASE, ("eot_timeout_ms", "1.5")], "eot_timeout_ms"),
        ([*BASE, ("mip_opt_out", "maybe")], "mip_opt_out"),
    ],
)
def test_a_bad_value_is_refused_before_the_upgrade_naming_it(
    items: list[tuple[str, str]], parameter: str
) -> None:
    with pytest.raises(BadHandshake) as refused:
        parse_query(items)
    assert refused.value.status == 400
    assert refused.value.parameter == parameter
    body = refused.value.body
    assert body is not None and body["type"] == "Error" and parameter in body["description"]


# Messages in.


def test_close_stream_flushes_and_disconnects_and_force_end_turn_steers() -> None:
    c = codec()
    assert c.decode_text('{"type": "CloseStream"}') == StopRequest(request="stop", disconnect=True)
    assert c.decode_text('{"type": "ForceEndTurn"}') == Steer(ForceEnd())
    assert c.decode_text('{"type": "KeepAlive"}') == KeepaliveRequest(request="keepalive")


def test_audio_and_zero_pcm_keep_alive_are_audio_and_an_empty_frame_changes_nothing() -> None:
    c = codec()
    assert c.decode_bytes(b"\x00\x00" * 160) == Audio(b"\x00\x00" * 160)
    assert c.decode_bytes(b"") == KeepaliveRequest(request="keepalive")


def test_configure_replaces_what_it_gives_and_echoes_every_threshold_in_force() -> None:
    c = codec(("eager_eot_threshold", "0.4"), ("keyterm", "one"))
    steer = c.decode_text(
        json.dumps({"type": "Configure", "thresholds": {"eot_threshold": 0.85}, "keyterms": None})
    )
    assert isinstance(steer, Steer)
    assert steer.command == TurnDetection(
        eot_threshold=0.85, eager_eot_threshold=0.4, eot_timeout_ms=5000
    )
    assert isinstance(steer.reply, dict)
    assert steer.reply["type"] == "ConfigureSuccess"
    assert steer.reply["thresholds"] == {
        "eot_threshold": 0.85,
        "eager_eot_threshold": 0.4,
        "eot_timeout_ms": 5000,
    }
    assert steer.reply["keyterms"] == ["one"]
    again = c.decode_text(
        json.dumps(
            {
                "type": "Configure",
                "thresholds": {"eot_timeout_ms": 2000, "eager_eot_threshold": None},
                "keyterms": ["two", "three"],
            }
        )
    )
    assert isinstance(again, Steer)
    assert again.command == TurnDetection(
        eot_threshold=0.85, eager_eot_threshold=0.4, eot_timeout_ms=2000
    )
    assert isinstance(again.reply, dict) and again.reply["keyterms"] == ["two", "three"]


@pytest.mark.parametrize(
    "body",
    [
        {"thresholds": {"eot_threshold": 1.5}},
        {"thresholds": {"eot_threshold": "high"}},
        {"thresholds": {"eot_threshold": True}},
        {"thresholds": {"eager_eot_threshold": 0.8}},  # above eot_threshold 0.7
        {"thresholds": {"eot_timeout_ms": 10}},
        {"thresholds": {"eot_timeout_ms": 1000.5}},
        {"thresholds": [0.7]},
        {"keyterms": 3},
        {"keyterms": ["ok", 3]},
    ],
)
def test_a_bad_configure_fails_and_changes_nothing(body: dict[str, Any]) -> None:
    c = codec()
    reply = c.decode_text(json.dumps({"type": "Configure", **body}))
    assert isinstance(reply, Reply)
    assert isinstance(reply.payload, dict)
    assert reply.payload["type"] == "ConfigureFailure"
    assert reply.payload["code"] == "INVALID_CONFIGURATION"
    assert reply.payload["description"]
    assert c.turns == TurnDetection()
    assert c.keyterms == ()


@pytest.mark.parametrize(
    ("text", "error"),
    [("not json", InvalidJson), ("[1]", InvalidMessage), ('{"type": "Speak"}', InvalidMessage)],
)
def test_a_bad_message_is_a_typed_error(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        codec().decode_text(text)


# Messages out.


def test_connected_first_then_every_message_numbered_from_zero() -> None:
    c = codec()
    connected = ready(c)
    assert connected == {
        "type": "Connected",
        "request_id": "req-1",
        "model": "flux-general-en",
        "sequence_id": 0,
    }
    assert c.messages(SpeechStarted(0, 0.4)) == []
    assert c.messages(SegmentResult(0, 0.4, 1.1, True, {"text": "Hello there."})) == []
    sequence = [
        c.messages(turn(kind))[0]["sequence_id"]
        for kind in ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed")
    ]
    reply = c.messages({"type": "ConfigureSuccess", "request_id": "req-1"})[0]
    assert [*sequence, reply["sequence_id"]] == [1, 2, 3, 4, 5]


def test_a_turn_is_a_turn_info_with_words_and_the_trigger_on_its_end_only() -> None:
    c = codec()
    ready(c)
    [update] = c.messages(turn("Update"))
    assert update == {
        "type": "TurnInfo",
        "request_id": "req-1",
        "sequence_id": 1,
        "event": "Update",
        "turn_index": 0,
        "audio_window_start": 0.4,
        "audio_window_end": 1.1,
        "transcript": "Hello there.",
        "words": [
            {"word": "Hello", "confidence": 0.91, "start": 0.5, "end": 0.8},
            {"word": "there.", "confidence": 0.88, "start": 0.8, "end": 1.1},
        ],
        "end_of_turn_confidence": 0.81,
    }
    [end] = c.messages(turn("EndOfTurn", trigger="manual"))
    assert end["trigger"] == "manual" and end["event"] == "EndOfTurn"


def test_errors_are_fluxs_and_a_failed_span_is_only_a_warning() -> None:
    c = codec()
    ready(c)
    [error] = c.messages(StreamError(ErrorCode.IDLE_TIMEOUT, "no audio for 10 s"))
    assert error == {
        "type": "Error",
        "code": "IDLE_TIMEOUT",
        "description": "no audio for 10 s",
        "sequence_id": 1,
    }
    [warning] = c.messages(StreamError(ErrorCode.MODEL_ERROR, "bad output", 0, 0.0, 1.0))
    assert warning["type"] == "Warning" and warning["code"] == "MODEL_ERROR"
    assert c.messages(Done(3.0)) == []
    assert close_code(None) == 1000


def test_the_real_sdk_reads_every_message_the_codec_sends() -> None:
    """Each message, validated by ``deepgram-sdk``'s own v2 models (strictly: every
    required field present and of its type)."""
    if not DEEPGRAM_PYTHON.exists():
        pytest.skip("the deepgram-sdk client environment (.venv-clients/deepgram) is absent")
    c = codec(("eager_eot_threshold", "0.5"))
    sent = [ready(c)]
    for kind in ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed"):
        sent += c.messages(turn(kind))
    sent += c.messages(turn("EndOfTurn", trigger="model"))
    configure = c.decode_text(
        json.dumps({"type": "Configure", "thresholds": {"eot_threshold": 0.8}})
    )
    assert isinstance(configure, Steer)
    sent += c.messages(configure.reply)  # type: ignore[arg-type]
    failure = c.decode_text(json.dumps({"type": "Configure", "thresholds": {"eot_threshold": 2}}))
    assert isinstance(failure, Reply)
    sent += c.messages(failure.payload)  # type: ignore[arg-type]
    sent += c.messages(StreamError(ErrorCode.MODEL_ERROR, "bad output", 0, 0.0, 1.0))
    sent += c.messages(StreamError(ErrorCode.IDLE_TIMEOUT, "no audio"))
    script = """
import json, sys
from deepgram.listen.v2 import types as t
models = {
    "Connected": t.ListenV2Connected, "TurnInfo": t.ListenV2TurnInfo,
    "ConfigureSuccess": t.ListenV2ConfigureSuccess,
    "ConfigureFailure": t.ListenV2ConfigureFailure,
    "Warning": t.ListenV2Warning, "Error": t.ListenV2FatalError,
}
out = []
for message in json.load(sys.stdin):
    model = models[message["type"]].model_validate(message)
    out.append([type(model).__name__, model.sequence_id])
print(json.dumps(out))
"""
    done = subprocess.run(
        [str(DEEPGRAM_PYTHON), "-c", script],
        input=json.dumps(sent),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)
    assert [name for name, _ in read] == [
        "ListenV2Connected",
        *["ListenV2TurnInfo"] * 5,
        "ListenV2ConfigureSuccess",
        "ListenV2ConfigureFailure",
        "ListenV2Warning",
        "ListenV2FatalError",
    ]
    assert [sequence for _, sequence in read] == list(range(10))
