"""The Realtime codec alone: client events to machine inputs, stream events to server events."""

from __future__ import annotations

import base64
import json

from streamer.codecs.openai_realtime import RealtimeCodec
from streamer.events import Ready, SegmentResult, SpeechEnded, SpeechStarted, StreamError, Turn
from streamer.protocol.inputs import Audio, Commit, Reply, Restart, Steer
from streamer.protocol.messages import KeepaliveRequest
from streamer.turn.stage import ForceEnd

TURN = "session.audio.input.turn_detection"


def update(**audio_input: object) -> str:
    session = {"type": "transcription", "audio": {"input": audio_input}}
    return json.dumps({"type": "session.update", "session": session})


def frames(codec: RealtimeCodec, event: object) -> list[dict[str, object]]:
    return [json.loads(f) for f in codec.encode(event)]  # type: ignore[arg-type]


def ready() -> Ready:
    return Ready("s", "segmented", "test", 16000, 1)


def test_server_vad_events_become_one_item_each() -> None:
    codec = RealtimeCodec()
    opening = codec.opening()
    assert isinstance(opening, Restart) and opening.route == "segmented"
    assert frames(codec, ready()) == []
    (started,) = frames(codec, SpeechStarted(0, 1.0))
    stopped, committed = frames(codec, SpeechEnded(0, 2.5))
    assert (started["audio_start_ms"], stopped["audio_end_ms"]) == (1000, 2500)
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    delta, completed = frames(codec, SegmentResult(0, 1.0, 2.5, True, {"text": "hi there"}))
    assert delta["delta"] == "hi there" and completed["transcript"] == "hi there"
    assert completed["usage"] == {"type": "duration", "seconds": 1.5}
    ids = [started["event_id"], stopped["event_id"], delta["event_id"], completed["event_id"]]
    assert len(set(ids)) == 4


def test_interim_deltas_are_the_words_added_since_the_last() -> None:
    codec = RealtimeCodec()
    codec.opening()
    codec.encode(ready())
    codec.encode(SpeechStarted(0, 0.0))
    (first,) = frames(codec, SegmentResult(0, 0.0, 1.0, False, {"text": "ask not..."}))
    (second,) = frames(codec, SegmentResult(0, 0.0, 2.0, False, {"text": "ask not what"}))
    assert (first["delta"], second["delta"]) == ("ask not", " what")
    assert frames(codec, SegmentResult(0, 0.0, 2.2, False, {"text": "a revision"})) == []


def test_manual_mode_buffers_until_commit_and_clear_drops_the_buffer() -> None:
    codec = RealtimeCodec()
    codec.opening()
    restart = codec.decode_text(update(turn_detection=None))
    assert isinstance(restart, Restart) and restart.route == "simple"
    append = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"})
    assert isinstance(codec.decode_text(append), KeepaliveRequest)
    assert codec.decode_text(json.dumps({"type": "input_audio_buffer.clear"})) == Reply(
        {"type": "input_audio_buffer.cleared"}
    )
    empty = codec.decode_text(json.dumps({"type": "input_audio_buffer.commit"}))
    assert isinstance(empty, Reply) and "empty" in json.dumps(empty.payload)
    codec.decode_text(append)
    commit = codec.decode_text(json.dumps({"type": "input_audio_buffer.commit"}))
    assert isinstance(commit, Commit) and commit.data == base64.b64decode("AAAA")


def test_bad_values_name_their_param_and_change_nothing() -> None:
    codec = RealtimeCodec(max_append_bytes=10)
    codec.opening()
    before = codec.config
    for text, param in [
        (update(format={"type": "audio/pcm", "rate": 8000}), "session.audio.input.format.rate"),
        (update(format={"type": "audio/opus"}), "session.audio.input.format.type"),
        (
            update(turn_detection={"type": "semantic_vad", "eagerness": "very"}),
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            update(turn_detection={"type": "near_field_vad"}),
            "session.audio.input.turn_detection.type",
        ),
        ('{"type": "input_audio_buffer.append", "audio": "!!"}', "audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 40}), "audio"),
        ('{"type": "response.create"}', "type"),
    ]:
        reply = codec.decode_text(text)
        assert isinstance(reply, Reply), text
        assert reply.payload["error"]["param"] == param  # type: ignore[index]
    assert codec.config == before
    assert isinstance(codec.decode_text("not json"), Reply)


def test_a_failed_segment_fails_its_item_and_other_errors_are_error_events() -> None:
    codec = RealtimeCodec()
    codec.opening()
    codec.encode(ready())
    codec.encode(SpeechStarted(0, 0.0))
    codec.encode(SpeechEnded(0, 1.0))
    (failed,) = frames(codec, StreamError("model_error", "boom", 0, 0.0, 1.0))
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    (error,) = frames(codec, StreamError("overloaded", "full"))
    assert error["error"] == {  # type: ignore[comparison-overlap]
        "type": "server_error",
        "code": "overloaded",
        "message": "full",
        "param": None,
        "event_id": None,
    }


def test_audio_in_vad_mode_goes_straight_to_the_stream() -> None:
    codec = RealtimeCodec()
    codec.opening()
    append = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"})
    assert codec.decode_text(append) == Audio(b"\x00\x00\x00")


def _turn(event: str, text: str = "", end: float = 1.0, trigger: str | None = None) -> Turn:
    return Turn(0, event, 0, text, (), 0.5, end, 0.9, trigger)


def test_semantic_vad_opens_a_turn_detecting_stream_by_eagerness() -> None:
    for eagerness, threshold, wait in [
        ("low", 0.85, 8000),
        ("medium", 0.7, 4000),
        ("high", 0.5, 2000),
        ("auto", 0.7, 4000),
    ]:
        codec = RealtimeCodec()
        codec.opening()
        restart = codec.decode_text(
            update(turn_detection={"type": "semantic_vad", "eagerness": eagerness})
        )
        assert isinstance(restart, Restart) and restart.route == "segmented"
        detection = restart.request.turn_detection
        assert detection is not None
        assert (detection.eot_threshold, detection.eot_timeout_ms) == (threshold, wait)
        assert not restart.request.interim_results
        session = restart.reply["session"]  # type: ignore[index]
        assert session["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": eagerness,
        }


def test_semantic_vad_items_are_turns_and_a_commit_ends_the_turn() -> None:
    codec = RealtimeCodec()
    codec.opening()
    codec.decode_text(update(turn_detection={"type": "semantic_vad"}))
    frames(codec, ready())
    frames(codec, ready())
    # The VAD's own segments are not items: the turns are.
    assert frames(codec, SpeechStarted(0, 0.5)) == []
    assert frames(codec, SpeechEnded(0, 1.0)) == []
    assert frames(codec, SegmentResult(0, 0.5, 1.0, True, {"text": "hi"})) == []
    (started,) = frames(codec, _turn("StartOfTurn"))
    assert started["type"] == "input_audio_buffer.speech_started"
    (delta,) = frames(codec, _turn("Update", "hi"))
    assert delta["delta"] == "hi"
    assert frames(codec, _turn("EagerEndOfTurn", "hi")) == []
    stopped, committed, more, completed = frames(codec, _turn("EndOfTurn", "hi there", 2.0))
    assert stopped["type"] == "input_audio_buffer.speech_stopped"
    assert stopped["audio_end_ms"] == 2000
    assert committed["type"] == "input_audio_buffer.committed"
    assert more["delta"] == " there"
    assert completed["transcript"] == "hi there"
    assert started["item_id"] == committed["item_id"] == completed["item_id"]
    assert completed["usage"] == {"type": "duration", "seconds": 1.5}
    assert codec.decode_text('{"type": "input_audio_buffer.commit"}') == Steer(ForceEnd())
