"""The ``/v1/listen`` codec: Deepgram's query, messages in and out, without a socket; then
over the real connection machine, pipeline, VAD and test model (``streamer.testing``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.codecs import deepgram
from streamer.codecs.deepgram import INTERIM_SECONDS, ListenCodec, close_code, parse_query
from streamer.errors import BadHandshake, ErrorCode, InvalidJson, InvalidMessage
from streamer.events import (
    Done,
    Finalized,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
)
from streamer.inference.model import TestModel
from streamer.pipeline import Route
from streamer.protocol.inputs import Audio, Input
from streamer.protocol.messages import (
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
)
from streamer.testing import Pause, codec_decoder, run_connection, running_services

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"
BASE = [("encoding", "linear16"), ("sample_rate", "16000")]


def codec(*items: tuple[str, str]) -> ListenCodec:
    return ListenCodec(parse_query([*BASE, *items]))


def ready(c: ListenCodec) -> None:
    c.messages(Ready("req-1", "segmented", "whisper-tiny.en", 16000, 1))


# The query.


def test_a_full_query_is_read_and_what_cannot_be_honoured_is_accepted() -> None:
    params = parse_query(
        [
            *BASE,
            ("channels", "2"),
            ("multichannel", "True"),
            ("interim_results", "true"),
            ("endpointing", "300"),
            ("utterance_end_ms", "1000"),
            ("vad_events", "TRUE"),
            ("language", "en-US"),
            ("model", "nova-3"),
            ("punctuate", "true"),
            ("smart_format", "false"),
            ("keyterm", "streamer"),
            ("keyterm", "Deepgram"),
            ("keywords", "whisper:2"),
            ("tag", "a"),
            ("tag", "b"),
            ("no_such_parameter", "whatever"),
        ]
    )
    assert (params.channels, params.multichannel, params.interim_results) == (2, True, True)
    assert (params.endpointing, params.utterance_end_ms, params.vad_events) == (300, 1000, True)
    assert params.keyterms == ("streamer", "Deepgram", "whisper:2")
    assert params.tags == ("a", "b") and params.model == "nova-3"
    start = params.start_request()
    assert start.format.channels == 2 and start.interim_results
    # Interims about once a second of speech, as Deepgram sends them.
    assert start.interim_interval == INTERIM_SECONDS == 1.0
    assert start.vad is not None and start.vad.min_silence_ms == 300


@pytest.mark.parametrize(
    ("items", "parameter"),
    [
        ([("encoding", "flac"), ("sample_rate", "16000")], "encoding"),
        ([("encoding", "ogg-opus"), ("sample_rate", "16000")], "encoding"),
        ([("encoding", "pcm_s16le"), ("sample_rate", "16000")], "encoding"),
        ([("sample_rate", "16000")], "encoding"),
        ([("encoding", "linear16")], "sample_rate"),
        ([("encoding", "linear16"), ("sample_rate", "0")], "sample_rate"),
        ([("encoding", "linear16"), ("sample_rate", "4000")], "sample_rate"),
        ([("encoding", "linear16"), ("sample_rate", "16k")], "sample_rate"),
        ([*BASE, ("channels", "0")], "channels"),
        ([*BASE, ("channels", "two")], "channels"),
        ([*BASE, ("endpointing", "soon")], "endpointing"),
        ([*BASE, ("endpointing", "0")], "endpointing"),
        ([*BASE, ("utterance_end_ms", "-1")], "utterance_end_ms"),
        ([*BASE, ("interim_results", "yes")], "interim_results"),
        ([*BASE, ("multichannel", "1")], "multichannel"),
        ([*BASE, ("punctuate", "sure")], "punctuate"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_parameter(
    items: list[tuple[str, str]], parameter: str
) -> None:
    with pytest.raises(BadHandshake) as info:
        parse_query(items)
    error = info.value
    assert error.status == 400 and error.parameter == parameter
    assert error.body is not None and error.body["parameter"] == parameter
    assert error.message.startswith(f"{parameter}:")


def test_endpointing_false_keeps_the_servers_pause_and_never_says_speech_final() -> None:
    c = codec(("endpointing", "false"))
    assert c.params.endpointing is None and c.params.endpointing_off
    ready(c)
    c.messages(SpeechStarted(0, 0.1))
    (results,) = c.messages(SegmentResult(0, 0.1, 1.0, True, {"text": "hi"}))
    assert results["is_final"] and not results["speech_final"]


# Messages in.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "KeepAlive"}', KeepaliveRequest(request="keepalive")),
        ('{"type": "Finalize"}', FinalizeRequest(request="finalize")),
        ('{"type": "CloseStream"}', StopRequest(request="stop", disconnect=True)),
    ],
)
def test_control_messages_become_the_machines_requests(text: str, expected: Input) -> None:
    assert codec().decode_text(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", InvalidJson),
        ("[1, 2]", InvalidMessage),
        ('{"type": "Configure"}', InvalidMessage),
        ('{"kind": "KeepAlive"}', InvalidMessage),
    ],
)
def test_bad_text_is_a_typed_client_error(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        codec().decode_text(text)


def test_the_opening_input_is_the_streams_start_and_an_empty_frame_ends_it() -> None:
    c = codec()
    (start,) = c.opening
    assert isinstance(start, StartRequest) and start.format.sample_rate == 16000
    assert c.decode_bytes(b"") == StopRequest(request="stop", disconnect=True)
    assert c.decode_bytes(b"\x01\x02") == Audio(b"\x01\x02")


def test_several_channels_without_multichannel_are_mixed_down_whatever_the_split() -> None:
    rng = np.random.default_rng(7)
    frames = rng.integers(-20000, 20000, size=(300, 3), dtype=np.int16)
    data = frames.tobytes()
    expected = (frames.astype(np.float32) / 32768).mean(axis=1)
    for step in (1, 5, 6, 7, 1000):
        c = codec(("channels", "3"))
        (start,) = c.opening
        assert isinstance(start, StartRequest)
        assert (start.format.channels, start.format.is_float) == (1, True)
        out = b""
        for offset in range(0, len(data), step):
            decoded = c.decode_bytes(data[offset : offset + step])
            assert isinstance(decoded, Audio)
            out += decoded.data
        np.testing.assert_allclose(np.frombuffer(out, "<f4"), expected, atol=1e-6)


# Messages out.


def test_a_result_with_words_in_deepgrams_shape() -> None:
    c = codec(("vad_events", "true"), ("utterance_end_ms", "1000"))
    ready(c)
    output = {
        "text": " Ask not.",
        "words": [
            # In stream time: the pipeline moved them from the segment's.
            {"word": " Ask", "start": 2.0, "end": 2.4, "confidence": 0.9},
            {"word": " not.", "start": 2.4, "end": 2.9, "confidence": 0.7},
        ],
    }
    (started,) = c.messages(SpeechStarted(0, 2.0))
    assert started == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 2.0}
    assert c.messages(SpeechEnded(0, 3.0)) == []
    results, end = c.messages(SegmentResult(0, 2.0, 3.0, True, output))
    assert results == {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": 1.0,
        "start": 2.0,
        "is_final": True,
        "speech_final": True,
        "from_finalize": False,
        "channel": {
            "alternatives": [
                {
                    "transcript": "Ask not.",
                    "confidence": 0.8,
                    "words": [
                        {
                            "word": "ask",
                            "start": 2.0,
                            "end": 2.4,
                            "confidence": 0.9,
                            "punctuated_word": "Ask",
                        },
                        {
                            "word": "not",
                            "start": 2.4,
                            "end": 2.9,
                            "confidence": 0.7,
                            "punctuated_word": "not.",
                        },
                    ],
                }
            ]
        },
        "metadata": {
            "request_id": "req-1",
            "model_info": {
                "name": "whisper-tiny.en",
                "version": "streamer",
                "arch": "whisper-tiny.en",
            },
            "model_uuid": c.model_uuid,
        },
    }
    assert end == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.9}


def test_interims_are_not_final_and_a_model_without_text_keeps_its_output() -> None:
    c = codec()
    ready(c)
    assert c.messages(SpeechStarted(0, 0.0)) == []  # vad_events not asked for
    (interim,) = c.messages(SegmentResult(0, 0.0, 0.5, False, {"count": 8000}))
    assert not interim["is_final"] and not interim["speech_final"]
    alternative = interim["channel"]["alternatives"][0]
    assert alternative == {"transcript": "", "confidence": 0.0, "words": []}
    assert interim[deepgram.EXTENSION_KEY] == {"count": 8000}


def test_finalize_results_are_marked_and_an_empty_one_stands_for_nothing_open() -> None:
    c = codec(("utterance_end_ms", "1000"))
    ready(c)
    c.messages(SpeechStarted(0, 0.2))
    forced = c.messages(SegmentResult(0, 0.2, 1.5, True, {"text": "and so"}, forced=True))
    assert forced[0]["from_finalize"] and forced[0]["is_final"] and not forced[0]["speech_final"]
    assert forced[1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.5}
    assert c.messages(Finalized(0, 1.5, forced=1)) == []
    (empty,) = c.messages(Finalized(0, 4.0, forced=0))
    assert empty["from_finalize"] and empty["is_final"] and empty["start"] == 4.0
    assert empty["duration"] == 0 and empty["channel"]["alternatives"][0]["transcript"] == ""


def test_errors_and_metadata() -> None:
    c = codec(("channels", "2"), ("multichannel", "true"))
    ready(c)
    c.decode_bytes(b"\x00" * 8)
    idle = c.messages(StreamError(ErrorCode.IDLE_TIMEOUT, "no audio or keepalive for 10 s"))[0]
    assert idle["type"] == "Error" and idle["code"] == "NET-0001"
    assert "timeout window" in idle["description"]
    schema = c.messages(StreamError(ErrorCode.INVALID_JSON, "message is not valid JSON"))[0]
    assert schema["variant"] == "SchemaError"
    (metadata,) = c.messages(Done(audio_seconds=2.5))
    assert metadata["type"] == "Metadata" and metadata["request_id"] == "req-1"
    assert metadata["sha256"] == hashlib.sha256(b"\x00" * 8).hexdigest()
    assert metadata["duration"] == 2.5 and metadata["channels"] == 2
    assert metadata["models"] == [c.model_uuid] and c.model_uuid in metadata["model_info"]
    assert all(isinstance(json.loads(m), dict) for m in c.encode(Done(audio_seconds=1.0)))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, 1000),
        (ErrorCode.IDLE_TIMEOUT, 1011),
        (ErrorCode.INTERNAL_ERROR, 1011),
        (ErrorCode.INVALID_FORMAT, 1008),
        (ErrorCode.OVERLOADED, 1013),
        (ErrorCode.SHUTTING_DOWN, 1001),
        (ErrorCode.SLOW_CONSUMER, 1008),
    ],
)
def test_deepgrams_close_codes(code: ErrorCode | None, expected: int) -> None:
    assert close_code(code) == expected


# Over the real machine and pipeline.


def _speech() -> bytes:
    samples, rate = sf.read(AUDIO / "jfk.wav", dtype="int16")
    assert rate == 16000
    return bytes(samples.tobytes())


async def _listen(c: ListenCodec, inbound: list[Any]) -> list[dict[str, Any]]:
    async with running_services(model=TestModel.speedy()) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [*c.opening, *inbound],
            decode=codec_decoder(c),
            encode=c.encode,
            mark_finalize=True,
        )
    assert outcome.close is not None and outcome.close.code is None
    return [json.loads(frame) for frames in outcome.sent for frame in frames]


async def test_finalize_in_speech_forces_one_marked_final_and_the_stream_goes_on() -> None:
    speech = _speech()
    c = codec()
    got = await _listen(
        c,
        [
            speech[:48000],  # 1.5 s: inside the first phrase
            '{"type": "Finalize"}',
            speech[48000:],
            Pause(0.05),
            '{"type": "CloseStream"}',
        ],
    )
    finals = [m for m in got if m["type"] == "Results" and m["is_final"]]
    forced = [m for m in finals if m["from_finalize"]]
    assert len(forced) == 1 and forced[0]["start"] + forced[0]["duration"] <= 1.5 + 1e-6
    assert forced[0]["streamer_output"]["count"] > 0
    assert len(finals) - finals.index(forced[0]) - 1 >= 2, "later speech is recognised too"
    assert got[-1]["type"] == "Metadata" and got[-1]["duration"] == 11.0


async def test_finalize_in_silence_gives_an_empty_marked_final() -> None:
    got = await _listen(
        codec(), [bytes(32000), '{"type": "Finalize"}', bytes(3200), '{"type": "CloseStream"}']
    )
    assert [m["type"] for m in got] == ["Results", "Metadata"]
    assert got[0]["from_finalize"] and got[0]["start"] == 1.0 and got[0]["duration"] == 0


async def test_streams_that_do_not_ask_get_no_marks() -> None:
    """The v1 routes: a finalize forces finals, unmarked, and no ``Finalized`` follows."""
    start = codec().opening[0]
    speech = _speech()[:48000]
    async with running_services(model=TestModel.speedy()) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [start, Audio(speech), FinalizeRequest(request="finalize"), bytes(3200)],
            decode=lambda m: Audio(m) if isinstance(m, bytes) else m,
            encode=lambda event: event,
            end=StopRequest(request="stop", disconnect=True),
        )
    finals = [e for e in outcome.sent if isinstance(e, SegmentResult) and e.final]
    assert finals and not any(e.forced for e in finals)
    assert not any(isinstance(e, Finalized) for e in outcome.sent)
