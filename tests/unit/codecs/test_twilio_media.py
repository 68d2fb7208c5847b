"""The Media Streams codec: Twilio's frames to machine inputs, tracks to channels, gaps
filled with silence, bad frames refused and counted, events to the call's sink."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twilio_calls import Call, messages, mulaw

from streamer.codecs.twilio_media import SILENCE, CallInfo, MediaStreamCodec
from streamer.errors import ErrorCode
from streamer.events import Done, SegmentResult, SpeechStarted
from streamer.protocol.inputs import Audio, Finish, Invalid, Reply
from streamer.protocol.messages import KeepaliveRequest, StartRequest

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"


class Sink:
    """A recording ``CallSink``."""

    def __init__(self) -> None:
        self.calls: list[CallInfo] = []
        self.published: list[tuple[dict[str, Any], bool]] = []
        self.ended: list[CallInfo] = []

    def opened(self, call: CallInfo) -> None:
        self.calls.append(call)

    def publish(self, call: CallInfo, body: Mapping[str, Any], *, final: bool) -> None:
        self.published.append((dict(body), final))

    def closed(self, call: CallInfo) -> None:
        self.ended.append(call)


def run(codec: MediaStreamCodec, texts: list[str]) -> tuple[bytes, list[Any]]:
    """Decode every frame; the audio the stream gets and every other input."""
    audio = bytearray()
    others = []
    for text in texts:
        decoded = codec.decode_text(text)
        if isinstance(decoded, Audio | Finish):
            audio += decoded.data
        if not isinstance(decoded, Audio):
            others.append(decoded)
    return bytes(audio), others


def tracks(seconds: float = 3.0) -> dict[str, bytes]:
    inbound = mulaw(AUDIO / "big_dog_8k.wav", seconds=seconds)
    outbound = mulaw(AUDIO / "cross_8k.wav", lead=0.5, seconds=seconds)
    return {"inbound": inbound, "outbound": outbound}


def test_a_call_opens_a_two_channel_mulaw_stream_and_interleaves_its_tracks() -> None:
    sink = Sink()
    codec = MediaStreamCodec(sink)
    both = tracks()
    audio, others = run(codec, [text for _, text in messages(Call(), both)])
    start = others[1]
    assert isinstance(start, StartRequest)
    fmt = start.format
    assert (fmt.channels, fmt.sample_rate, fmt.bit_depth, fmt.encoding) == (2, 8000, 8, "mulaw")
    assert audio[0::2] == both["inbound"] and audio[1::2] == both["outbound"]
    assert isinstance(others[-1], Finish)
    (call,) = sink.calls
    assert (call.call_sid, call.tracks) == (
        "CA00000000000000000000000000000001",
        ("inbound", "outbound"),
    )
    notes = [o.payload for o in others if isinstance(o, Reply)]
    assert notes == [
        {"type": "dtmf", "digit": "5", "track": "inbound_track"},
        {"type": "mark", "name": "greeting"},
    ]


def test_one_track_is_one_channel() -> None:
    codec = MediaStreamCodec(Sink())
    inbound = tracks()["inbound"]
    audio, others = run(codec, [t for _, t in messages(Call(), {"inbound": inbound})])
    assert others[1].format.channels == 1
    assert audio == inbound


def test_a_gap_in_the_timestamps_is_filled_with_silence_so_times_stay_true() -> None:
    codec = MediaStreamCodec(Sink())
    both = tracks()
    audio, _ = run(codec, [t for _, t in messages(Call(skip=(1.0, 1.5)), both)])
    inbound = bytearray(both["inbound"])
    inbound[8000:12000] = SILENCE * 4000
    assert audio[0::2] == bytes(inbound)
    assert audio[1::2] == both["outbound"]


def test_a_repeated_frame_adds_nothing_and_a_track_that_lags_is_filled_up_to_the_skew() -> None:
    codec = MediaStreamCodec(Sink(), max_skew_seconds=0.1)
    frame = base64.b64encode(b"\x10" * 160).decode()

    def media(track: str, ms: int) -> str:
        body = {"track": track, "chunk": "1", "timestamp": str(ms), "payload": frame}
        return json.dumps({"event": "media", "media": body})

    start = dict(messages(Call(), {"inbound": b"", "outbound": b""})[1:2])
    codec.decode_text(next(iter(start.values())))
    assert codec.decode_text(media("inbound", 0)) == Audio(b"")  # waits for outbound
    assert codec.decode_text(media("inbound", 0)) == Audio(b"")  # a repeat: nothing new
    # 300 ms ahead: outbound is filled with silence up to 100 ms behind.
    got = codec.decode_text(media("inbound", 300))
    assert isinstance(got, Audio) and len(got.data) == 2 * 8 * 220
    assert got.data[1::2] == SILENCE * 8 * 220


@pytest.mark.parametrize(
    ("frame", "reason", "code"),
    [
        ("not json", "invalid_json", ErrorCode.INVALID_JSON),
        ('{"event": "dance"}', "unknown_event", ErrorCode.INVALID_MESSAGE),
        ('{"event": "media", "media": {"payload": "AAAA"}}', "before_start", ErrorCode.NOT_STARTED),
        ('{"event": "dtmf", "dtmf": {"digit": "1"}}', "before_start", ErrorCode.NOT_STARTED),
    ],
)
def test_bad_frames_before_start_are_refused_and_counted(
    frame: str, reason: str, code: ErrorCode
) -> None:
    rejected: list[str] = []
    codec = MediaStreamCodec(Sink(), on_rejected=rejected.append)
    decoded = codec.decode_text(frame)
    assert isinstance(decoded, Invalid) and decoded.error.code is code
    assert rejected == [reason]


def test_bad_frames_in_a_call_are_refused_and_the_next_frames_still_count() -> None:
    rejected: list[str] = []
    codec = MediaStreamCodec(Sink(), on_rejected=rejected.append)
    sequence = [t for _, t in messages(Call(), {"inbound": tracks(1.0)["inbound"]})]
    codec.decode_text(sequence[0])
    codec.decode_text(sequence[1])
    bad = [
        '{"event": "media", "media": {"track": "inbound", "timestamp": "0", "payload": "@@@"}}',
        '{"event": "media", "media": {"track": "outbound", "timestamp": "0", "payload": "AA=="}}',
        '{"event": "media", "media": {"track": "inbound", "timestamp": "soon", "payload": "AA=="}}',
        '{"event": "hangup"}',
    ]
    for frame in bad:
        assert isinstance(codec.decode_text(frame), Invalid)
    assert rejected == ["bad_payload", "unknown_track", "bad_timestamp", "unknown_event"]
    audio, _ = run(codec, sequence[2:])
    assert audio == tracks(1.0)["inbound"]


def test_a_format_other_than_mulaw_8k_is_refused_then_media_is_too() -> None:
    rejected: list[str] = []
    codec = MediaStreamCodec(Sink(), on_rejected=rejected.append)
    start = json.loads(messages(Call(), {"inbound": b""})[1][1])
    start["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}
    decoded = codec.decode_text(json.dumps(start))
    assert isinstance(decoded, Invalid) and decoded.error.code is ErrorCode.INVALID_FORMAT
    media = '{"event": "media", "media": {"track": "inbound", "timestamp": "0", "payload": "AA=="}}'
    assert isinstance(codec.decode_text(media), Invalid)
    assert rejected == ["unsupported_format", "before_start"]
    assert isinstance(codec.decode_text('{"event": "connected"}'), KeepaliveRequest)


def test_events_go_to_the_sink_with_the_call_and_track_and_nothing_to_twilio() -> None:
    sink = Sink()
    codec = MediaStreamCodec(sink)
    codec.decode_text(messages(Call(), {"inbound": b"", "outbound": b""})[1][1])
    final = SegmentResult(channel=1, start=0.5, end=1.5, final=True, output={"text": "hi"})
    assert codec.encode(SpeechStarted(channel=1, time=0.5)) == []
    assert codec.encode(final) == []
    assert codec.encode(Done(audio_seconds=2.0)) == []
    (active, _), (segment, is_final), (done, done_final) = sink.published
    assert active["type"] == "active" and active["track"] == "outbound"
    assert segment["text"] == "hi" and segment["track"] == "outbound" and is_final
    assert segment["call_sid"] == "CA00000000000000000000000000000001"
    assert done["type"] == "done" and done_final
    assert len(sink.ended) == 1
    codec.close()
    assert len(sink.ended) == 1, "the sink hears of the end once"
