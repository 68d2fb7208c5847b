"""The turn stage: every state against every kind of input, and Flux's promises over
random sequences."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.turn.stage import (
    RULES,
    EndTrigger,
    ForceEnd,
    Input,
    Kind,
    Output,
    Pause,
    Probability,
    ScoreTurn,
    SpeechStarted,
    Transcript,
    TurnEvent,
    TurnEventKind,
    TurnSettings,
    TurnStage,
    TurnState,
    WithdrawScore,
    Word,
    classify,
)

EAGER_ON = TurnSettings(
    eot_threshold=0.7, eager_eot_threshold=0.5, eot_timeout_ms=5000, rescore_ms=500
)
S, K, E = TurnState, Kind, TurnEventKind


def stage_in(state: TurnState, with_request: bool) -> TurnStage:
    """A stage brought to ``state`` by real inputs (plus an open engine request where
    ``with_request`` asks for one and the inputs left none)."""
    stage = TurnStage(EAGER_ON)
    if state is not S.IDLE:
        stage.handle(SpeechStarted(0.0))
        stage.handle(Transcript("hello", (Word("hello", 0.9, 0.1, 0.5),), audio_end=0.5))
    if state in (S.PAUSED, S.EAGER):
        stage.handle(Pause(speech_end=1.0, now=1.3))  # asks request 0
    if state is S.EAGER:
        stage.handle(Probability(0, 0.6))
        stage.handle(Pause(speech_end=1.0, now=1.9))  # rescored: request 1
    assert stage.state is state
    if with_request and stage.request is None:
        # Unreachable in use (no request is open while idle or speaking), but the table
        # names these pairs too.
        stage.request = 99
    return stage


def input_of(stage: TurnStage, kind: Kind) -> Input:
    """An input of ``kind`` for ``stage`` as it stands."""
    request = -1 if stage.request is None else stage.request
    match kind:
        case K.SPEECH:
            return SpeechStarted(2.0)
        case K.PAUSE:
            return Pause(speech_end=1.0, now=1.05)
        case K.PAUSE_SCORE:
            asked = stage.asked_at
            return Pause(speech_end=1.0, now=1.3 if asked is None else 1.0 + asked + 0.6)
        case K.PAUSE_TIMEOUT:
            return Pause(speech_end=1.0, now=7.0)
        case K.END:
            return Probability(request, 0.8)
        case K.EAGER:
            return Probability(request, 0.55)
        case K.LOW:
            return Probability(request, 0.1)
        case K.STALE:
            return Probability(-1, 0.9)
        case K.TRANSCRIPT:
            return Transcript(stage.text + " there", audio_end=stage.last_update_end + 1.0)
        case K.TRANSCRIPT_HOLD:
            return Transcript(stage.text, audio_end=stage.last_update_end + 1.0)
        case K.FORCE:
            return ForceEnd()


def expected(state: TurnState, kind: Kind) -> tuple[TurnState, list[str]]:
    """The reference: where each pair leads and what it emits (events by kind, work by
    type), written from Flux's description rather than from the table."""
    ends_with: dict[TurnState, list[str]] = {
        S.SPEAKING: ["EndOfTurn"],
        S.PAUSED: ["WithdrawScore", "EndOfTurn"],
        S.EAGER: ["WithdrawScore", "EndOfTurn"],
    }
    if state is S.IDLE:
        return (S.SPEAKING, ["StartOfTurn"]) if kind is K.SPEECH else (S.IDLE, [])
    if kind is K.FORCE or kind is K.PAUSE_TIMEOUT:
        return S.IDLE, ends_with[state]
    if kind is K.STALE or kind is K.TRANSCRIPT_HOLD:
        return state, []
    if state is S.SPEAKING:
        if kind is K.PAUSE:
            return S.PAUSED, []
        if kind is K.PAUSE_SCORE:
            return S.PAUSED, ["ScoreTurn"]
        if kind is K.TRANSCRIPT:
            return S.SPEAKING, ["Update"]
        return S.SPEAKING, []  # speech goes on; answers to nothing asked are ignored
    if kind is K.SPEECH:
        return S.SPEAKING, ["WithdrawScore"] + (["TurnResumed"] if state is S.EAGER else [])
    if kind is K.PAUSE:
        return state, []
    if kind is K.PAUSE_SCORE:
        return state, ["ScoreTurn"]
    if kind is K.END:
        return S.IDLE, ["EndOfTurn"]
    if kind is K.EAGER and state is S.PAUSED:
        return S.EAGER, ["EagerEndOfTurn"]
    if kind is K.TRANSCRIPT:
        return (S.PAUSED, ["TurnResumed"]) if state is S.EAGER else (S.PAUSED, ["Update"])
    return state, []  # a low (or repeated eager) probability changes nothing announced


def names(outputs: list[Output]) -> list[str]:
    return [o.kind.value if isinstance(o, TurnEvent) else type(o).__name__ for o in outputs]


def test_the_table_names_every_pair() -> None:
    assert set(RULES) == set(itertools.product(TurnState, Kind))


@pytest.mark.parametrize(("state", "kind"), list(itertools.product(TurnState, Kind)))
def test_every_state_and_input(state: TurnState, kind: Kind) -> None:
    needs_request = kind in (K.END, K.EAGER, K.LOW)
    stage = stage_in(state, with_request=needs_request)
    event = input_of(stage, kind)
    assert classify(stage, event) is kind
    index = stage.turn_index
    outputs = stage.handle(event)
    next_state, emitted = expected(state, kind)
    assert stage.state is next_state
    assert names(outputs) == emitted
    ended = "EndOfTurn" in emitted
    assert stage.turn_index == index + (1 if ended else 0)
    for output in outputs:
        if isinstance(output, TurnEvent):
            assert output.turn_index == index
            assert (output.trigger is not None) == (output.kind is E.END_OF_TURN)


def test_a_turn_with_an_eager_end_then_its_end() -> None:
    stage = TurnStage(TurnSettings(eot_threshold=0.8, eager_eot_threshold=0.4))
    words = (Word("hi", 0.9, 0.2, 0.4), Word("there", 0.8, 0.5, 0.9))
    out = stage.handle(SpeechStarted(0.2))
    assert [(e.kind, e.turn_index) for e in out if isinstance(e, TurnEvent)] == [
        (E.START_OF_TURN, 0)
    ]
    [update] = stage.handle(Transcript("hi there", words, audio_end=0.9))
    assert isinstance(update, TurnEvent) and update.kind is E.UPDATE
    assert update.words == words and update.audio_window_start == 0.2
    assert stage.handle(Pause(speech_end=0.9, now=1.0)) == []
    assert stage.handle(Pause(speech_end=0.9, now=1.1)) == [ScoreTurn(0, 1.1)]
    [eager] = stage.handle(Probability(0, 0.5))
    assert isinstance(eager, TurnEvent) and eager.kind is E.EAGER_END_OF_TURN
    assert eager.end_of_turn_confidence == 0.5 and eager.transcript == "hi there"
    # Without a rescore the model is not asked again: the timeout ends it.
    assert stage.handle(Pause(speech_end=0.9, now=3.0)) == []
    [end] = stage.handle(Pause(speech_end=0.9, now=5.9))
    assert isinstance(end, TurnEvent) and end.kind is E.END_OF_TURN
    assert end.trigger is EndTrigger.TIMEOUT and end.transcript == eager.transcript
    assert end.audio_window_end == 0.9 and end.turn_index == 0
    [start] = stage.handle(SpeechStarted(7.0))
    assert isinstance(start, TurnEvent) and start.turn_index == 1 and start.transcript == ""


def test_speech_after_a_pause_withdraws_the_request_and_its_late_answer_is_ignored() -> None:
    stage = TurnStage(TurnSettings(eager_eot_threshold=0.3))
    stage.handle(SpeechStarted(0.0))
    assert stage.handle(Pause(speech_end=1.0, now=1.25)) == [ScoreTurn(0, 1.25)]
    assert stage.handle(SpeechStarted(1.4)) == [WithdrawScore(0)]
    assert stage.handle(Probability(0, 0.99)) == []  # stale: the turn goes on
    assert stage.state is TurnState.SPEAKING


def test_a_forced_end_carries_the_transcript_and_the_manual_trigger() -> None:
    stage = TurnStage()
    stage.handle(SpeechStarted(0.0))
    stage.handle(Transcript("stop here", audio_end=1.2))
    [end] = stage.handle(ForceEnd())
    assert isinstance(end, TurnEvent)
    assert (end.kind, end.trigger, end.transcript) == (
        E.END_OF_TURN,
        EndTrigger.MANUAL,
        "stop here",
    )
    assert end.audio_window_end == 1.2


def test_a_confident_answer_before_min_end_silence_is_an_early_end_then_asked_again() -> None:
    turns = TurnSettings(eot_threshold=0.7, eager_eot_threshold=0.5, min_end_silence_ms=600)
    stage = TurnStage(turns)
    stage.handle(SpeechStarted(0.0))
    stage.handle(Transcript("all done", audio_end=1.0))
    assert stage.handle(Pause(speech_end=1.0, now=1.25)) == [ScoreTurn(0, 1.25)]
    [eager] = stage.handle(Probability(0, 0.95))  # asked at 250 ms: too soon to end
    assert isinstance(eager, TurnEvent) and eager.kind is E.EAGER_END_OF_TURN
    assert eager.end_of_turn_confidence == 0.95 and stage.state is S.EAGER
    assert stage.handle(Pause(speech_end=1.0, now=1.5)) == []
    assert stage.handle(Pause(speech_end=1.0, now=1.6)) == [ScoreTurn(1, 1.6)]
    assert stage.handle(Pause(speech_end=1.0, now=1.7)) == []  # asked once at 600 ms
    [end] = stage.handle(Probability(1, 0.9))
    assert isinstance(end, TurnEvent) and end.kind is E.END_OF_TURN
    assert end.trigger is EndTrigger.MODEL and end.transcript == "all done"


def test_without_early_ends_a_confident_answer_too_soon_waits_quietly() -> None:
    stage = TurnStage(TurnSettings(min_end_silence_ms=500))
    stage.handle(SpeechStarted(0.0))
    assert stage.handle(Pause(speech_end=1.0, now=1.25)) == [ScoreTurn(0, 1.25)]
    assert stage.handle(Probability(0, 0.99)) == []
    assert stage.state is S.PAUSED
    assert stage.handle(Pause(speech_end=1.0, now=1.5)) == [ScoreTurn(1, 1.5)]
    [end] = stage.handle(Probability(1, 0.99))
    assert isinstance(end, TurnEvent) and end.trigger is EndTrigger.MODEL


def test_a_low_answer_before_min_end_silence_is_not_asked_again() -> None:
    stage = TurnStage(TurnSettings(min_end_silence_ms=500))
    stage.handle(SpeechStarted(0.0))
    assert stage.handle(Pause(speech_end=1.0, now=1.25)) == [ScoreTurn(0, 1.25)]
    assert stage.handle(Probability(0, 0.2)) == []
    assert stage.handle(Pause(speech_end=1.0, now=1.75)) == []  # no rescore asked for


@pytest.mark.parametrize(("min_end", "ends_at"), [(0, 0.25), (300, 0.375), (800, 0.875)])
def test_a_longer_min_end_silence_ends_the_turn_later(min_end: int, ends_at: float) -> None:
    """The same pause, observed every 125 ms, and a model that is always sure."""
    stage = TurnStage(TurnSettings(min_end_silence_ms=min_end))
    stage.handle(SpeechStarted(0.0))
    for step in range(1, 40):
        now = step / 8
        for output in stage.handle(Pause(speech_end=0.0, now=now)):
            if isinstance(output, ScoreTurn) and stage.handle(Probability(output.request, 0.9)):
                assert now == ends_at and stage.state is S.IDLE
                return
    pytest.fail("the turn never ended")


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="eager"):
        TurnSettings(eot_threshold=0.5, eager_eot_threshold=0.6)
    with pytest.raises(ValueError, match="eot_threshold"):
        TurnSettings(eot_threshold=0)
    with pytest.raises(ValueError, match="rescore"):
        TurnSettings(rescore_ms=0)
    with pytest.raises(ValueError, match="min_end_silence_ms"):
        TurnSettings(min_end_silence_ms=-1)


# -- random sequences never break Flux's promises --------------------------------------------

TEXTS = ["", "hi", "hi there", "hi there you"]


@dataclass(frozen=True)
class AnswerOpen:
    """Stands for the engine answering the stage's open request, whichever it is (random
    request numbers alone would seldom match one)."""

    probability: float


PROBABILITIES = st.sampled_from([0.1, 0.35, 0.55, 0.75, 0.95]) | st.floats(0, 1)
answers = st.builds(AnswerOpen, PROBABILITIES)
pauses = st.builds(
    lambda end, silence: Pause(end, end + silence),
    st.floats(0, 20),
    st.sampled_from([0.05, 0.15, 0.25, 0.45, 0.9, 2.0, 6.0]),
)
transcripts = st.builds(Transcript, st.sampled_from(TEXTS), st.just(()), st.floats(0, 20))
# Repeated strategies weigh the draw towards what moves a turn along (an end forced at
# every sixth input would end most turns before an early end).
inputs = st.one_of(
    answers,
    answers,
    pauses,
    pauses,
    transcripts,
    transcripts,
    st.builds(SpeechStarted, st.floats(0, 20)),
    st.builds(Probability, st.integers(-1, 6), PROBABILITIES),
    st.just(ForceEnd()),
)
settings_ = st.builds(
    TurnSettings,
    eot_threshold=st.sampled_from([0.5, 0.7, 0.9]),
    eager_eot_threshold=st.sampled_from([None, 0.3, 0.5]),
    eot_timeout_ms=st.sampled_from([1000, 5000]),
    min_pause_ms=st.sampled_from([0, 200, 500]),
    rescore_ms=st.sampled_from([None, 100, 400]),
    update_ms=st.sampled_from([0, 250]),
    min_end_silence_ms=st.sampled_from([0, 0, 300, 1000]),
)


def keeps_the_promises(stage: TurnStage, sequence: list[Input | AnswerOpen]) -> list[TurnEvent]:
    """Run ``sequence`` through ``stage`` and check Flux's promises on what comes out."""
    events: list[TurnEvent] = []
    asked: list[int] = []
    silences: dict[int, float] = {}  # the pause each request asked about
    for item in sequence:
        if isinstance(item, AnswerOpen):
            open_request = -1 if stage.request is None else stage.request
            event: Input = Probability(open_request, item.probability)
        else:
            event = item
        for output in stage.handle(event):
            if isinstance(output, TurnEvent):
                events.append(output)
                if output.trigger is EndTrigger.MODEL:  # never before min_end_silence_ms
                    assert isinstance(event, Probability)
                    assert silences[event.request] * 1000 >= stage.settings.min_end_silence_ms
            elif isinstance(output, ScoreTurn):
                asked.append(output.request)
                assert stage.asked_at is not None
                silences[output.request] = stage.asked_at
            else:
                assert output.request in asked  # only what was asked is withdrawn
    assert asked == sorted(set(asked))  # request ids are fresh each time
    index = 0
    opened = False
    early: TurnEvent | None = None  # the turn's EagerEndOfTurn not yet resumed
    for event in events:
        assert event.turn_index == index
        if not opened:
            assert event.kind is E.START_OF_TURN  # every turn opens with StartOfTurn
            opened = True
            continue
        assert event.kind is not E.START_OF_TURN
        if event.kind is E.TURN_RESUMED:
            assert early is not None  # only after an EagerEndOfTurn
            early = None
        elif event.kind is E.EAGER_END_OF_TURN:
            assert early is None
            early = event
        elif event.kind is E.END_OF_TURN:
            if early is not None:
                assert event.transcript == early.transcript
            assert event.trigger is not None
            index += 1  # the index grows right after EndOfTurn
            opened, early = False, None
        if event.kind is not E.END_OF_TURN:
            assert event.trigger is None
    assert stage.turn_index == index
    return events


@settings(max_examples=1000, deadline=None)
@given(settings_, st.lists(inputs, max_size=60))
def test_random_inputs_keep_the_promises(
    turns: TurnSettings, sequence: list[Input | AnswerOpen]
) -> None:
    keeps_the_promises(TurnStage(turns), sequence)


# Every sequence of five steps over inputs that each move a turn somewhere, on a growing
# clock, with early ends on: the paths random draws reach seldom (early end, new words,
# resumption, end) are all walked.
STEPS = {
    "speech": lambda t, text: SpeechStarted(t),
    "gap": lambda t, text: Pause(t, t + 0.05),
    "pause": lambda t, text: Pause(t, t + 0.3),
    "long pause": lambda t, text: Pause(t, t + 0.9),
    "timeout": lambda t, text: Pause(t, t + 6.0),
    "low": lambda t, text: AnswerOpen(0.1),
    "eager": lambda t, text: AnswerOpen(0.6),
    "end": lambda t, text: AnswerOpen(0.9),
    "words": lambda t, text: Transcript(f"{text} w{t:.0f}".strip(), audio_end=t),
    "force": lambda t, text: ForceEnd(),
}


def test_every_short_sequence_keeps_the_promises() -> None:
    turns = TurnSettings(eot_threshold=0.8, eager_eot_threshold=0.5, rescore_ms=400)
    seen: set[E] = set()
    for names_ in itertools.product(STEPS, repeat=5):
        stage = TurnStage(turns)
        sequence: list[Input | AnswerOpen] = []
        for t, name in enumerate(names_, start=1):
            text = "" if not sequence else f"t{t}"
            sequence.append(STEPS[name](float(t), text))
        seen.update(event.kind for event in keeps_the_promises(stage, sequence))
    assert seen == set(E)
