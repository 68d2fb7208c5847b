"""The turn engine: newest pause first, stale requests dropped, with a fake model and the
real one on real speech."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from streamer.errors import ShuttingDown
from streamer.testing import ManualClock
from streamer.turn.engine import TurnAnswer, TurnEngine
from streamer.turn.features import turn_features
from streamer.turn.model import SmartTurn
from streamer.turn.stage import (
    EndTrigger,
    Pause,
    Probability,
    ScoreTurn,
    SpeechStarted,
    TurnEvent,
    TurnEventKind,
    TurnStage,
)

AUDIO = Path(__file__).parents[2] / "fixtures" / "audio"
Audio = NDArray[np.float32]
WAIT = 30.0  # seconds a test waits for an event before it fails (never reached when green)


@functools.cache
def speech(name: str) -> Audio:
    audio, rate = sf.read(AUDIO / name, dtype="float32")
    assert rate == 16000
    return np.asarray(audio, dtype=np.float32)


def clip(seconds: float) -> Audio:
    """The start of a real recording: each length gives different features."""
    return speech("harvard_16k.wav")[: int(seconds * 16000)]


def fingerprint(audio: Audio) -> float:
    return round(float(turn_features(audio).sum()), 1)


class FakeModel:
    """A model that records what it ran, answers from its input, and can be held.

    ``hold()`` makes the next call wait inside ``run`` until ``release()``, so a test can
    queue requests behind a call in progress.
    """

    threads = 1

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[float]] = []
        self.fail = fail
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self._gate.set()

    def run(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        self.entered.set()
        assert self._gate.wait(WAIT)
        self.calls.append([round(float(f.sum()), 1) for f in features])
        if self.fail:
            raise RuntimeError("the fake model failed")
        # Deterministic and in [0, 1]: the mean feature squashed.
        return np.asarray(1 / (1 + np.exp(-features.mean(axis=(1, 2)))), dtype=np.float32)


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def engine(model: FakeModel) -> Iterator[TurnEngine]:
    with TurnEngine(model) as engine:
        yield engine


def busy(engine: TurnEngine, model: FakeModel) -> None:
    """Put a call in progress that waits for ``model.release()``."""
    model.hold()
    engine.submit(engine.open_stream(), clip(0.5))
    assert model.entered.wait(WAIT)


def test_an_answer_comes_back(engine: TurnEngine, model: FakeModel) -> None:
    audio = clip(2.0)
    answer = engine.submit(engine.open_stream(), audio).result(WAIT)
    assert isinstance(answer, TurnAnswer)
    assert answer.batch == 1
    expected = 1 / (1 + np.exp(-turn_features(audio).mean()))
    assert answer.probability == pytest.approx(expected, abs=1e-5)
    assert model.calls == [[fingerprint(audio)]]
    assert engine.calls_run == 1 and engine.windows_run == 1
    assert engine.cost_per_window > 0 and engine.cpu_seconds > 0


async def test_an_answer_comes_back_on_the_loop(engine: TurnEngine) -> None:
    answer = await asyncio.wait_for(engine.submit(engine.open_stream(), clip(1.0)).get(), WAIT)
    assert answer is not None and 0 <= answer.probability <= 1


def test_the_newest_pause_goes_first(engine: TurnEngine, model: FakeModel) -> None:
    busy(engine, model)
    audios = [clip(1.0), clip(1.5), clip(2.0)]
    replies = [engine.submit(engine.open_stream(), a) for a in audios]
    model.release()
    assert all(r.result(WAIT) is not None for r in replies)
    assert model.calls[1:] == [[fingerprint(a)] for a in reversed(audios)]


def test_a_newer_request_of_a_stream_replaces_the_older(
    engine: TurnEngine, model: FakeModel
) -> None:
    busy(engine, model)
    stream = engine.open_stream()
    older = engine.submit(stream, clip(1.0))
    newer = engine.submit(stream, clip(1.5))
    assert older.done() and older.result() is None
    model.release()
    assert newer.result(WAIT) is not None
    assert model.calls[1:] == [[fingerprint(clip(1.5))]]
    assert engine.superseded == 1


def test_withdrawing_drops_the_waiting_request(engine: TurnEngine, model: FakeModel) -> None:
    busy(engine, model)
    stream, other = engine.open_stream(), engine.open_stream()
    dropped = engine.submit(stream, clip(1.0))
    kept = engine.submit(other, clip(1.5))
    assert engine.withdraw(stream)
    assert dropped.result(0) is None
    assert not engine.withdraw(stream)  # nothing waits any more
    model.release()
    assert kept.result(WAIT) is not None
    assert model.calls[1:] == [[fingerprint(clip(1.5))]]
    assert engine.withdrawn == 1 and engine.waiting() == 0


def test_a_request_that_waited_too_long_is_dropped(model: FakeModel) -> None:
    clock = ManualClock()
    with TurnEngine(model, max_wait=1.0, clock=clock) as engine:
        busy(engine, model)
        late = engine.submit(engine.open_stream(), clip(1.0))
        clock.now += 1.5
        fresh = engine.submit(engine.open_stream(), clip(1.5))
        model.release()
        assert late.result(WAIT) is None
        answer = fresh.result(WAIT)
        assert answer is not None and answer.waited == 0
        assert engine.expired == 1
        assert model.calls[1:] == [[fingerprint(clip(1.5))]]


def test_batches_take_the_newest_requests_first(model: FakeModel) -> None:
    with TurnEngine(model, max_batch=2) as engine:
        busy(engine, model)
        audios = [clip(1.0), clip(1.5), clip(2.0)]
        replies = [engine.submit(engine.open_stream(), a) for a in audios]
        model.release()
        answers = [r.result(WAIT) for r in replies]
        assert [a.batch if a else None for a in answers] == [1, 2, 2]
        assert model.calls[1:] == [
            [fingerprint(audios[2]), fingerprint(audios[1])],
            [fingerprint(audios[0])],
        ]


def test_a_failing_model_fails_its_requests_only() -> None:
    model = FakeModel(fail=True)
    with TurnEngine(model) as engine:
        with pytest.raises(RuntimeError, match="fake model failed"):
            engine.submit(engine.open_stream(), clip(1.0)).result(WAIT)
        model.fail = False
        assert engine.submit(engine.open_stream(), clip(1.0)).result(WAIT) is not None
        assert engine.running


def test_closing_fails_waiting_requests_and_refuses_new_ones(model: FakeModel) -> None:
    engine = TurnEngine(model)
    engine.start()
    busy(engine, model)
    waiting = engine.submit(engine.open_stream(), clip(1.0))
    closer = threading.Thread(target=engine.close)
    closer.start()
    model.release()
    closer.join(WAIT)
    with pytest.raises(ShuttingDown):
        waiting.result(WAIT)
    with pytest.raises(ShuttingDown):
        engine.submit(engine.open_stream(), clip(1.0))
    assert not engine.running


def test_bad_arguments_are_refused(model: FakeModel) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        TurnEngine(model, max_batch=0)
    with pytest.raises(ValueError, match="threads"):
        TurnEngine(threads=0)
    with pytest.raises(RuntimeError, match="not started"):
        engine = TurnEngine(model)
        engine.submit(engine.open_stream(), clip(1.0))
    with TurnEngine(model) as one, TurnEngine(model) as two:
        with pytest.raises(ValueError, match="another engine"):
            one.submit(two.open_stream(), clip(1.0))


def test_the_real_model_on_real_speech() -> None:
    # A complete sentence then silence, against the same sentence cut mid-phrase.
    harvard = speech("harvard_16k.wav")
    with TurnEngine(SmartTurn()) as engine:
        complete, cut = engine.open_stream(), engine.open_stream()
        ended = engine.submit(complete, harvard[: int(2.9 * 16000)]).result(WAIT)
        unfinished = engine.submit(cut, harvard[: int(1.5 * 16000)]).result(WAIT)
        assert ended is not None and unfinished is not None
        assert ended.probability > 0.7 > 0.5 > unfinished.probability
        assert engine.cost_per_window > 0


def run_pause(stage: TurnStage, engine: TurnEngine, audio: Audio, pause: float) -> list[TurnEvent]:
    """Speech, then ``pause`` seconds of silence observed a VAD frame at a time, with the
    stage's requests run on the engine and their answers fed back as they come. The
    silence is noise at the recording's floor (about -56 dBFS), as a live line has."""
    stream = engine.open_stream()
    quiet = np.random.default_rng(1).normal(0, 0.0016, int(pause * 16000) + 1600)
    events = [e for e in stage.handle(SpeechStarted(0.0)) if isinstance(e, TurnEvent)]
    end = len(audio) / 16000
    silence = 0.0
    while silence < pause:
        silence = round(silence + 0.032, 3)
        outputs = stage.handle(Pause(speech_end=end, now=end + silence))
        while outputs:
            output = outputs.pop(0)
            if isinstance(output, TurnEvent):
                events.append(output)
            elif isinstance(output, ScoreTurn):
                heard = quiet[: int((output.audio_end - end) * 16000)].astype(np.float32)
                answer = engine.submit(stream, np.concatenate((audio, heard))).result(WAIT)
                assert answer is not None
                outputs += stage.handle(Probability(output.request, answer.probability))
    return events


def test_the_stage_and_the_engine_on_a_complete_and_a_cut_sentence() -> None:
    # "The birch canoe slid on the smooth planks." then silence ends its turn by the
    # model; "The birch canoe slid on the" then a pause of a second does not.
    harvard = speech("harvard_16k.wav")
    with TurnEngine(SmartTurn()) as engine:
        complete = run_pause(TurnStage(), engine, harvard[: int(2.6 * 16000)], 1.0)
        assert [e.kind for e in complete] == [
            TurnEventKind.START_OF_TURN,
            TurnEventKind.END_OF_TURN,
        ]
        assert complete[-1].trigger is EndTrigger.MODEL
        assert complete[-1].end_of_turn_confidence >= 0.7
        cut = run_pause(TurnStage(), engine, harvard[: int(1.58 * 16000)], 1.0)
        assert [e.kind for e in cut] == [TurnEventKind.START_OF_TURN]
