"""Turn detection wired into the segmented route: the tracker over VAD frames (sans-I/O),
then Flux connections over the real connection machine, pipeline, VAD, test model and the
bundled end-of-turn model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.codecs.deepgram_flux import FluxCodec, parse_query
from streamer.config import Settings
from streamer.errors import InvalidMessage
from streamer.events import Route
from streamer.inference.model import TestModel
from streamer.protocol.messages import StopRequest, TurnEventModel, parse_start
from streamer.testing import Pause, codec_decoder, run_connection, running_services
from streamer.turn.stage import ScoreTurn, TurnEvent, TurnEventKind, TurnSettings, Word
from streamer.turn.tracker import Score, TurnTracker

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"
FRAME = 512
SPEECH, SILENCE = 0.9, 0.05


def frames(n: int, value: float = 0.1) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.full((n, FRAME), value, dtype=np.float32)


def kinds(steps: list[Any]) -> list[str]:
    return [s.kind.value if isinstance(s, TurnEvent) else type(s).__name__ for s in steps]


# The tracker.


def test_a_turn_opens_after_a_run_of_speech_and_a_pause_asks_for_a_score_and_a_decode() -> None:
    tracker = TurnTracker(TurnSettings(min_pause_ms=200), min_speech_frames=3, pad_frames=2)
    assert tracker.push(frames(5, 0.0), [SILENCE] * 5) == []
    assert tracker.push(frames(2), [SPEECH] * 2) == []  # not yet a run of 3
    [start] = tracker.push(frames(1), [SPEECH])
    assert isinstance(start, TurnEvent) and start.kind is TurnEventKind.START_OF_TURN
    assert start.audio_window_start == pytest.approx(5 * FRAME / 16000)
    tracker.push(frames(20), [SPEECH] * 20)
    steps = tracker.push(frames(7, 0.0), [SILENCE] * 7)  # 224 ms of silence
    [score] = [s for s in steps if isinstance(s, Score)]
    assert len(score.window) == 35 * FRAME  # less than 8 s so far: all of it
    assert score.decode is not None
    # The turn's speech and 2 frames either side, not the silence before.
    assert score.decode.start == pytest.approx(3 * FRAME / 16000)
    assert score.decode.end == pytest.approx(28 * FRAME / 16000)
    assert len(score.decode.audio) == 27 * FRAME
    words = (Word("And", 0.9, 0.2, 0.4), Word("so.", 0.8, 0.4, 0.8))
    assert kinds(tracker.transcript(score.decode.key, "And so.", words)) == ["Update"]
    [end] = tracker.probability(score.request, 0.95)
    assert isinstance(end, TurnEvent) and end.kind is TurnEventKind.END_OF_TURN
    assert (end.transcript, end.words, end.end_of_turn_confidence) == ("And so.", words, 0.95)
    assert not tracker.open


def test_the_transcript_of_an_early_end_is_reused_when_no_speech_came_between() -> None:
    settings = TurnSettings(eager_eot_threshold=0.4, min_pause_ms=100, rescore_ms=100)
    tracker = TurnTracker(settings, min_speech_frames=1)
    tracker.push(frames(10), [SPEECH] * 10)
    steps = tracker.push(frames(4, 0.0), [SILENCE] * 4)
    [first] = [s for s in steps if isinstance(s, Score)]
    assert first.decode is not None
    tracker.transcript(first.decode.key, "Hello", ())
    assert kinds(tracker.probability(first.request, 0.5)) == ["EagerEndOfTurn"]
    steps = tracker.push(frames(4, 0.0), [SILENCE] * 4)
    [again] = [s for s in steps if isinstance(s, Score)]
    assert again.decode is None  # the same audio: the eager transcript stands
    [end] = tracker.probability(again.request, 0.9)
    assert isinstance(end, TurnEvent) and end.transcript == "Hello"


def test_a_stale_decode_is_dropped_and_speech_after_an_early_end_resumes() -> None:
    settings = TurnSettings(eager_eot_threshold=0.4, min_pause_ms=100)
    tracker = TurnTracker(settings, min_speech_frames=1)
    tracker.push(frames(10), [SPEECH] * 10)
    [old] = [s for s in tracker.push(frames(4, 0.0), [SILENCE] * 4) if isinstance(s, Score)]
    tracker.push(frames(3), [SPEECH] * 3)  # speech: the request is withdrawn
    [new] = [s for s in tracker.push(frames(4, 0.0), [SILENCE] * 4) if isinstance(s, Score)]
    assert old.decode is not None and new.decode is not None
    assert tracker.transcript(old.decode.key, "Hel", ()) == []
    tracker.transcript(new.decode.key, "Hello there", ())
    assert kinds(tracker.probability(old.request, 0.99)) == []  # stale
    assert kinds(tracker.probability(new.request, 0.5)) == ["EagerEndOfTurn"]
    assert kinds(tracker.push(frames(1), [SPEECH])) == ["TurnResumed"]  # answered: no withdraw


@pytest.mark.parametrize("min_end_silence_ms", [0, 600])
def test_a_sure_model_ends_the_turn_only_once_the_pause_reaches_min_end_silence(
    min_end_silence_ms: int,
) -> None:
    settings = TurnSettings(
        eager_eot_threshold=0.5, min_pause_ms=200, min_end_silence_ms=min_end_silence_ms
    )
    tracker = TurnTracker(settings, min_speech_frames=1)
    tracker.push(frames(20), [SPEECH] * 20)
    silent = 0
    while tracker.open and silent < 60:  # up to ~2 s of silence, a frame (32 ms) at a time
        silent += 1
        for step in tracker.push(frames(1, 0.0), [SILENCE]):
            if isinstance(step, Score):
                if step.decode is not None:
                    tracker.transcript(step.decode.key, "Done.", ())
                ends = tracker.probability(step.request, 0.95)
                assert kinds(ends) == (
                    ["EndOfTurn"]
                    if silent * FRAME * 1000 >= min_end_silence_ms * 16000
                    else ["EagerEndOfTurn"]
                )
    # The end came at the first frame whose pause reached the larger of the two minimums.
    assert not tracker.open
    assert silent == -(-max(200, min_end_silence_ms) * 16 // FRAME)


def test_a_long_pause_ends_the_turn_by_timeout_and_the_window_is_the_last_8_s() -> None:
    tracker = TurnTracker(TurnSettings(eot_timeout_ms=1000), min_speech_frames=1)
    tracker.push(frames(300), [SPEECH] * 300)  # 9.6 s
    steps = tracker.push(frames(40, 0.0), [SILENCE] * 40)
    [score] = [s for s in steps if isinstance(s, Score)]
    assert len(score.window) == 8 * 16000
    end = [s for s in steps if isinstance(s, TurnEvent)][-1]
    assert end.kind is TurnEventKind.END_OF_TURN and end.trigger is not None
    assert end.trigger.value == "timeout"
    assert not any(isinstance(s, ScoreTurn) for s in steps)


def test_speech_going_on_past_a_forced_end_opens_the_next_turn_from_the_cut() -> None:
    tracker = TurnTracker(TurnSettings(min_pause_ms=200), min_speech_frames=3, pad_frames=2)
    tracker.push(frames(5, 0.0), [SILENCE] * 5)
    tracker.push(frames(20), [SPEECH] * 20)
    assert kinds(tracker.force_end()) == ["EndOfTurn"]
    [start] = tracker.push(frames(1), [SPEECH])  # the speaker goes on: a turn at once
    assert isinstance(start, TurnEvent) and start.kind is TurnEventKind.START_OF_TURN
    assert start.audio_window_start == pytest.approx(25 * FRAME / 16000)
    tracker.push(frames(9), [SPEECH] * 9)
    steps = tracker.push(frames(7, 0.0), [SILENCE] * 7)
    [score] = [s for s in steps if isinstance(s, Score)]
    assert score.decode is not None
    # Its audio starts at the cut (the ended turn had what came before) and goes on.
    assert score.decode.start == pytest.approx(25 * FRAME / 16000)
    assert score.decode.end == pytest.approx(35 * FRAME / 16000)


def test_a_forced_end_in_a_pause_or_at_the_end_opens_nothing() -> None:
    tracker = TurnTracker(TurnSettings(min_pause_ms=200), min_speech_frames=3)
    tracker.push(frames(20), [SPEECH] * 20)
    tracker.push(frames(2, 0.0), [SILENCE] * 2)
    assert kinds(tracker.force_end()) == ["EndOfTurn"]
    assert tracker.push(frames(5, 0.0), [SILENCE] * 5) == []
    assert not tracker.open
    tracker.push(frames(20), [SPEECH] * 20)
    assert kinds(tracker.force_end()) == ["EndOfTurn"]
    assert not tracker.open  # nothing opens until more speech comes


# Over the real pipeline.


class Saying(TestModel):
    """The test model, with a transcript: one word per second of audio, with its times."""

    def infer_batch(self, batch: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        out = []
        for result, audio in zip(super().infer_batch(batch), batch, strict=True):
            seconds = len(audio) / self.sample_rate
            words = [
                {"word": f"w{i}", "start": i, "end": min(i + 1, seconds), "probability": 0.9}
                for i in range(max(1, int(seconds)))
            ]
            out.append({**result, "text": " ".join(w["word"] for w in words), "words": words})
        return out


def _speech(name: str = "jfk.wav") -> bytes:
    samples, rate = sf.read(AUDIO / name, dtype="int16")
    assert rate == 16000
    return bytes(samples.tobytes())


async def _flux(c: FluxCodec, inbound: list[Any]) -> list[dict[str, Any]]:
    async with running_services(model=Saying()) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [*c.opening, *inbound],
            decode=codec_decoder(c),
            encode=c.encode,
            encode_reply=c.encode,
            end=StopRequest(request="stop", disconnect=True),
        )
    assert outcome.close is not None and outcome.close.code is None
    return [json.loads(frame) for frames in outcome.sent for frame in frames]


def _check_flux_rules(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flux's promises over a whole connection; the turn messages."""
    assert got[0]["type"] == "Connected"
    sequence = [m["sequence_id"] for m in got]
    assert sequence == sorted(set(sequence)), sequence
    turns = [m for m in got if m["type"] == "TurnInfo"]
    index, open_, eager = 0, False, None
    for m in turns:
        assert m["turn_index"] == index, m
        if m["event"] == "StartOfTurn":
            assert not open_
            open_ = True
        else:
            assert open_, m
        if m["event"] == "EagerEndOfTurn":
            eager = m["transcript"]
        if m["event"] == "TurnResumed":
            assert eager is not None
            eager = None
        if m["event"] == "EndOfTurn":
            assert m["trigger"] in ("model", "timeout", "manual")
            if eager is not None:
                assert m["transcript"] == eager
            open_, eager, index = False, None, index + 1
        else:
            assert "trigger" not in m
    return turns


async def test_real_speech_then_silence_gives_whole_turns() -> None:
    speech = _speech()
    c = FluxCodec(
        parse_query(
            [
                ("model", "flux-general-en"),
                ("encoding", "linear16"),
                ("sample_rate", "16000"),
                ("eager_eot_threshold", "0.4"),
            ]
        )
    )
    got = await _flux(
        c, [speech[i : i + 6400] for i in range(0, len(speech), 6400)] + [bytes(96000)]
    )
    turns = _check_flux_rules(got)
    assert turns[0]["event"] == "StartOfTurn"
    ends = [m for m in turns if m["event"] == "EndOfTurn"]
    assert ends and turns[-1]["event"] == "EndOfTurn"
    assert all(m["transcript"] for m in ends)
    assert all(m["words"] for m in ends)
    assert ends[-1]["audio_window_end"] <= len(speech) / 32000 + 0.1


async def test_configure_and_force_end_turn_mid_stream() -> None:
    speech = _speech()[:48000]  # 1.5 s: inside the first phrase
    c = FluxCodec(
        parse_query(
            [("model", "flux-general-en"), ("encoding", "linear16"), ("sample_rate", "16000")]
        )
    )
    got = await _flux(
        c,
        [
            '{"type": "Configure", "thresholds": {"eot_threshold": 0.9, "eot_timeout_ms": 8000}}',
            speech,
            Pause(0.05),
            '{"type": "ForceEndTurn"}',
            '{"type": "Configure", "thresholds": {"eot_threshold": 2}}',
            '{"type": "CloseStream"}',
        ],
    )
    turns = _check_flux_rules(got)
    [success] = [m for m in got if m["type"] == "ConfigureSuccess"]
    assert success["thresholds"] == {"eot_threshold": 0.9, "eot_timeout_ms": 8000}
    assert [m["type"] for m in got].index("ConfigureSuccess") == 1
    assert any(m["type"] == "ConfigureFailure" for m in got)
    assert [m["event"] for m in turns][-1] == "EndOfTurn"
    assert turns[-1]["trigger"] == "manual" and turns[-1]["transcript"]


async def test_turn_detection_is_refused_on_the_simple_route() -> None:
    start = parse_start(
        {
            "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "encoding": "pcm"},
            "turn_detection": {},
        }
    )
    async with running_services(Settings(), TestModel.speedy()) as services:
        with pytest.raises(InvalidMessage, match="turn_detection"):
            services.streams.options(Route.SIMPLE, start)
        options = services.streams.options(Route.SEGMENTED, start)
    assert options.turns == TurnSettings()


async def test_a_v1_segmented_stream_with_turn_detection_sends_turn_events() -> None:
    start = json.dumps(
        {
            "request": "start",
            "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16},
            "turn_detection": {"eot_threshold": 0.8, "eot_timeout_ms": 1000},
        }
    )
    speech = _speech()
    async with running_services(model=Saying()) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [start, speech, bytes(64000), '{"request": "stop"}'],
        )
        registry = services.metrics.registry
    sent = [json.loads(frame) for frame in outcome.sent]
    turns = [m for m in sent if m["type"] == "turn"]
    kinds = [m["event"] for m in turns]
    assert kinds[0] == "start" and kinds[-1] == "end" and "update" in kinds, kinds
    for turn in turns:
        TurnEventModel.model_validate(turn)
    ends = [m for m in turns if m["event"] == "end"]
    assert all(m["transcript"] and m["words"] for m in ends), ends
    assert [m["turn_index"] for m in ends] == list(range(len(ends)))
    # The segments go on as before.
    assert any(m["type"] == "segment" for m in sent) and sent[-1]["type"] == "done"
    # Counted: each turn event by its event, and the end-of-turn model's calls.
    labels = {"route": "segmented", "event": "EndOfTurn"}
    assert registry.get_sample_value("streamer_turn_events_total", labels) == len(ends)
    assert (registry.get_sample_value("streamer_turn_model_seconds_count") or 0) >= 1


async def test_a_v1_finalize_ends_the_open_turn_and_speech_after_it_opens_the_next() -> None:
    body = {
        "request": "start",
        "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16},
        # Only the end of the audio or a finalize can end a turn here.
        "turn_detection": {"eot_threshold": 0.9, "eot_timeout_ms": 10000},
        "segments": False,
    }
    speech = _speech()
    half = len(speech) // 4 * 2
    async with running_services(model=Saying()) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [
                json.dumps(body),
                speech[:half],
                '{"request": "finalize"}',
                speech[half:],
                '{"request": "stop"}',
            ],
        )
    sent = [json.loads(frame) for frame in outcome.sent]
    turns = [(m["event"], m["turn_index"], m.get("trigger")) for m in sent if m["type"] == "turn"]
    first_end = turns.index(("end", 0, "manual"))  # at the finalize: no timeout, no 0.9
    assert ("start", 1, None) in turns[first_end:], turns
    [end] = [
        m for m in sent if m["type"] == "turn" and m["event"] == "end" and m["turn_index"] == 0
    ]
    assert end["transcript"] and end["end_time"] <= half / 32000 + 0.05, end


async def test_a_stream_of_turns_alone_infers_no_segments() -> None:
    """``segments: false`` (what ``/v2/listen`` and ``semantic_vad`` ask): speech events
    and turns, no segment and no inference of one; without turn detection it is refused."""
    body: dict[str, Any] = {
        "request": "start",
        "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16},
        "turn_detection": {},
        "segments": False,
    }
    model = Saying()
    async with running_services(model=model) as services:
        outcome = await run_connection(
            services,
            Route.SEGMENTED,
            [json.dumps(body), _speech(), bytes(64000), '{"request": "stop"}'],
        )
        refused = await run_connection(
            services,
            Route.SEGMENTED,
            [json.dumps({**body, "turn_detection": None})],
        )
    sent = [json.loads(frame) for frame in outcome.sent]
    kinds = {m["type"] for m in sent}
    assert "segment" not in kinds and {"turn", "active", "inactive", "done"} <= kinds
    ends = [m for m in sent if m["type"] == "turn" and m["event"] == "end"]
    assert ends and all(m["transcript"] for m in ends)
    [error] = [json.loads(frame) for frame in refused.sent]
    assert error["code"] == "invalid_message" and "segments" in error["message"]
