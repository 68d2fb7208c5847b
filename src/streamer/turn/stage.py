"""One channel's turns, sans-I/O: VAD observations, transcripts and end-of-turn
probabilities in; turn events and work for the turn engine out.

A route feeds a ``TurnStage`` what it observed (speech started, a pause of so long, a
transcript of the turn so far, the engine's answer, the client forcing an end) and carries
out what it returns: ``TurnEvent``s to send, ``ScoreTurn`` (hand the channel's audio up to
then to the turn engine) and ``WithdrawScore`` (speech resumed: drop that request). The
stage never touches audio, a clock or a socket.

The rules are the table ``RULES``: (state, input kind) -> (next state, step), naming the
next state of every pair. An input's kind depends on its values as well as its type (a
probability above ``eot_threshold`` is an ``END`` and below it an ``EAGER`` or a ``LOW``;
an answer to a withdrawn request is ``STALE``), so ``classify`` decides it first and the
table never has to look at numbers (an answer ``>= eot_threshold`` about a pause shorter
than ``min_end_silence_ms`` is not an ``END``, and a pause that then reaches it asks
again). The rules keep Deepgram Flux's promises: a turn opens
with ``StartOfTurn``; ``TurnResumed`` comes only after ``EagerEndOfTurn``; an
``EndOfTurn`` after an ``EagerEndOfTurn`` carries the same transcript (a transcript that
changes meanwhile resumes the turn first); ``turn_index`` grows right after
``EndOfTurn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

__all__ = [
    "RULES",
    "EndTrigger",
    "ForceEnd",
    "Input",
    "Kind",
    "Output",
    "Pause",
    "Probability",
    "ScoreTurn",
    "SpeechStarted",
    "Transcript",
    "TurnEvent",
    "TurnEventKind",
    "TurnSettings",
    "TurnStage",
    "TurnState",
    "WithdrawScore",
    "Word",
    "classify",
]


class TurnState(Enum):
    IDLE = "idle"  # no turn open: waiting for speech (Flux's initial state, and after a turn)
    SPEAKING = "speaking"  # a turn is open and its speaker is talking
    PAUSED = "paused"  # a turn is open, its speaker is silent, no early end announced
    EAGER = "eager"  # an early end was announced; the end, or the turn's resumption, follows


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """A stream's turn detection (Flux's query parameters, and the model's cadence)."""

    eot_threshold: float = 0.7
    """An end-of-turn probability at or above this ends the turn."""
    eager_eot_threshold: float | None = None
    """At or above this (and below ``eot_threshold``) an early end is announced; None: never."""
    eot_timeout_ms: int = 5000
    """A pause this long ends the turn whatever the model says."""
    min_pause_ms: int = 200
    """The model is asked once a pause is this long: shorter ones are gaps between words."""
    min_end_silence_ms: int = 0
    """The model's answer may end the turn only when it was asked about a pause at least
    this long (AssemblyAI's ``min_turn_silence``). A confident answer about a shorter one
    counts as an early end (or as a low answer, without ``eager_eot_threshold``), and the
    model is asked again once the pause reaches it."""
    rescore_ms: int | None = None
    """Ask the model again each time the pause grows by this much; None: once a pause."""
    update_ms: int = 250
    """An ``Update`` at most every this much transcribed audio."""

    def __post_init__(self) -> None:
        if not 0 < self.eot_threshold <= 1:
            raise ValueError("eot_threshold must be in (0, 1]")
        eager = self.eager_eot_threshold
        if eager is not None and not 0 < eager <= self.eot_threshold:
            raise ValueError("eager_eot_threshold must be in (0, eot_threshold]")
        if self.eot_timeout_ms <= 0 or min(self.min_pause_ms, self.update_ms) < 0:
            raise ValueError(
                "eot_timeout_ms must be positive, min_pause_ms and update_ms not negative"
            )
        if self.min_end_silence_ms < 0:
            raise ValueError("min_end_silence_ms must not be negative")
        if self.rescore_ms is not None and self.rescore_ms <= 0:
            raise ValueError("rescore_ms must be positive")


@dataclass(frozen=True, slots=True)
class Word:
    """A word of a transcript, with its times in the stream (seconds)."""

    word: str
    confidence: float
    start: float
    end: float


# Inputs. Times are seconds of the channel's audio, not of a clock.


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The VAD heard speech begin (a turn opens, or a paused one goes on)."""

    at: float


@dataclass(frozen=True, slots=True)
class Pause:
    """The VAD hears silence since ``speech_end``, as of ``now``; sent as the pause grows."""

    speech_end: float
    now: float

    @property
    def silence(self) -> float:
        return self.now - self.speech_end


@dataclass(frozen=True, slots=True)
class Probability:
    """The turn engine's answer to ``ScoreTurn(request)``."""

    request: int
    probability: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """The transcript of the open turn so far, up to ``audio_end``."""

    text: str
    words: tuple[Word, ...] = ()
    audio_end: float = 0.0


@dataclass(frozen=True, slots=True)
class ForceEnd:
    """The client ends the turn now (Flux's ``ForceEndTurn``)."""


Input: TypeAlias = SpeechStarted | Pause | Probability | Transcript | ForceEnd


# Outputs.


class TurnEventKind(Enum):
    START_OF_TURN = "StartOfTurn"
    UPDATE = "Update"
    EAGER_END_OF_TURN = "EagerEndOfTurn"
    TURN_RESUMED = "TurnResumed"
    END_OF_TURN = "EndOfTurn"


class EndTrigger(Enum):
    """Why a turn ended."""

    MODEL = "model"  # the probability reached eot_threshold
    TIMEOUT = "timeout"  # the pause reached eot_timeout_ms
    MANUAL = "manual"  # the client forced it


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """What a turn did, with everything a client shows: the transcript so far and its
    words, the turn's audio window (seconds), and the latest end-of-turn probability."""

    kind: TurnEventKind
    turn_index: int
    transcript: str
    words: tuple[Word, ...]
    audio_window_start: float
    audio_window_end: float
    end_of_turn_confidence: float
    trigger: EndTrigger | None = None
    """Only on ``EndOfTurn``."""


@dataclass(frozen=True, slots=True)
class ScoreTurn:
    """Ask the turn engine about the channel's audio up to ``audio_end``; answer with
    ``Probability(request, ...)``."""

    request: int
    audio_end: float


@dataclass(frozen=True, slots=True)
class WithdrawScore:
    """Speech resumed: the engine may drop ``request`` (an answer that comes anyway is
    ignored)."""

    request: int


Output: TypeAlias = TurnEvent | ScoreTurn | WithdrawScore


class Kind(Enum):
    """An input as the table sees it (``classify``)."""

    SPEECH = "speech"
    PAUSE = "pause"  # silence, not yet long enough to ask the model (again)
    PAUSE_SCORE = "pause_score"  # silence long enough to ask the model
    PAUSE_TIMEOUT = "pause_timeout"  # silence of eot_timeout_ms
    END = "end"  # probability >= eot_threshold, about a pause of min_end_silence_ms
    EAGER = "eager"  # eager_eot_threshold <= probability, and not an END
    LOW = "low"  # below both, or an END too soon without eager_eot_threshold
    STALE = "stale"  # an answer to a request that is no longer the open one
    TRANSCRIPT = "transcript"  # text to announce (an Update is due, or it changed the
    # early end's transcript)
    TRANSCRIPT_HOLD = "transcript_hold"  # text kept for the next event
    FORCE = "force"


class TurnStage:
    """One channel's turn state, its transcript so far and its open engine request."""

    __slots__ = (
        "asked_at",
        "confidence",
        "eager_text",
        "last_update_end",
        "next_request",
        "request",
        "settings",
        "speech_end",
        "state",
        "text",
        "turn_index",
        "turn_start",
        "words",
    )

    def __init__(self, settings: TurnSettings = TurnSettings()) -> None:
        self.settings = settings
        self.state = TurnState.IDLE
        self.turn_index = 0
        self.text = ""
        self.words: tuple[Word, ...] = ()
        self.eager_text: str | None = None
        self.turn_start = 0.0
        self.speech_end = 0.0
        self.last_update_end = 0.0
        self.confidence = 0.0
        self.request: int | None = None
        """The engine request whose answer counts (None: none open)."""
        self.next_request = 0
        self.asked_at: float | None = None
        """The silence (seconds) at which this pause last asked the model."""

    def handle(self, event: Input) -> list[Output]:
        """What ``event`` calls for, in order; the state moves with it."""
        kind = classify(self, event)
        next_state, step = RULES[self.state, kind]
        outputs = step(self, event)
        self.state = next_state
        return outputs

    # -- helpers of the steps -------------------------------------------------------------

    def _event(
        self, kind: TurnEventKind, end: float, trigger: EndTrigger | None = None
    ) -> TurnEvent:
        return TurnEvent(
            kind=kind,
            turn_index=self.turn_index,
            transcript=self.text,
            words=self.words,
            audio_window_start=self.turn_start,
            audio_window_end=end,
            end_of_turn_confidence=self.confidence,
            trigger=trigger,
        )

    def _ask(self, pause: Pause) -> list[Output]:
        self.request = self.next_request
        self.next_request += 1
        self.asked_at = pause.silence
        return [ScoreTurn(self.request, pause.now)]

    def _withdraw(self) -> list[Output]:
        request, self.request = self.request, None
        self.asked_at = None
        return [] if request is None else [WithdrawScore(request)]

    def _end(self, trigger: EndTrigger) -> list[Output]:
        outputs = self._withdraw()
        end = max(self.speech_end, self.last_update_end)
        outputs.append(self._event(TurnEventKind.END_OF_TURN, end, trigger))
        self.turn_index += 1
        self.text, self.words, self.eager_text = "", (), None
        self.confidence = 0.0
        return outputs


def classify(stage: TurnStage, event: Input) -> Kind:
    """The kind of ``event`` for ``stage`` as it stands (what ``RULES`` is keyed by)."""
    settings = stage.settings
    if isinstance(event, SpeechStarted):
        return Kind.SPEECH
    if isinstance(event, ForceEnd):
        return Kind.FORCE
    if isinstance(event, Pause):
        silence = event.silence
        if silence * 1000 >= settings.eot_timeout_ms:
            return Kind.PAUSE_TIMEOUT
        if silence * 1000 < settings.min_pause_ms:
            return Kind.PAUSE
        asked = stage.asked_at
        if asked is None:
            return Kind.PAUSE_SCORE
        if _held_end(stage, asked) and silence * 1000 >= settings.min_end_silence_ms:
            return Kind.PAUSE_SCORE  # a confident answer came too soon: ask again now
        rescore = settings.rescore_ms
        if rescore is not None and (silence - asked) * 1000 >= rescore:
            return Kind.PAUSE_SCORE
        return Kind.PAUSE
    if isinstance(event, Probability):
        if stage.request is None or event.request != stage.request:
            return Kind.STALE
        asked = stage.asked_at or 0.0
        if event.probability >= settings.eot_threshold and not _too_soon(stage, asked):
            return Kind.END
        eager = settings.eager_eot_threshold
        if eager is not None and event.probability >= eager:
            return Kind.EAGER
        return Kind.LOW
    if stage.state is TurnState.EAGER:
        return Kind.TRANSCRIPT if event.text != stage.eager_text else Kind.TRANSCRIPT_HOLD
    due = (event.audio_end - stage.last_update_end) * 1000 >= settings.update_ms
    return Kind.TRANSCRIPT if due and event.text != stage.text else Kind.TRANSCRIPT_HOLD


def _too_soon(stage: TurnStage, asked: float) -> bool:
    """An answer about a pause of ``asked`` seconds may not end the turn yet
    (``min_end_silence_ms``)."""
    return asked * 1000 < stage.settings.min_end_silence_ms


def _held_end(stage: TurnStage, asked: float) -> bool:
    """The last answer, about a pause of ``asked`` seconds, would have ended the turn but
    for ``min_end_silence_ms``."""
    return stage.confidence >= stage.settings.eot_threshold and _too_soon(stage, asked)


# -- steps: what a rule does besides moving the state ---------------------------------------

_Step = Callable[[TurnStage, Input], list[Output]]


def _nothing(stage: TurnStage, event: Input) -> list[Output]:
    return []


def _open(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, SpeechStarted)
    stage.turn_start = stage.speech_end = stage.last_update_end = event.at
    stage.text, stage.words, stage.eager_text = "", (), None
    stage.confidence = 0.0
    return [stage._event(TurnEventKind.START_OF_TURN, event.at)]


def _go_on(stage: TurnStage, event: Input) -> list[Output]:
    """Speech after a pause with no early end: the engine's request is moot."""
    return stage._withdraw()


def _resume(stage: TurnStage, event: Input) -> list[Output]:
    """Speech after an early end: the turn goes on, and says so."""
    assert isinstance(event, SpeechStarted)
    outputs = stage._withdraw()
    stage.eager_text = None
    outputs.append(stage._event(TurnEventKind.TURN_RESUMED, event.at))
    return outputs


def _pause_begins(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Pause)
    stage.speech_end = event.speech_end
    stage.asked_at = None
    return []


def _score(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Pause)
    stage.speech_end = event.speech_end
    return stage._ask(event)


def _pause_begins_scored(stage: TurnStage, event: Input) -> list[Output]:
    _pause_begins(stage, event)
    return _score(stage, event)


def _timeout(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Pause)
    stage.speech_end = event.speech_end
    return stage._end(EndTrigger.TIMEOUT)


def _model_end(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Probability)
    stage.confidence = event.probability
    stage.request = None  # answered: nothing to withdraw
    return stage._end(EndTrigger.MODEL)


def _eager(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Probability)
    stage.confidence = event.probability
    stage.request = None
    stage.eager_text = stage.text
    return [stage._event(TurnEventKind.EAGER_END_OF_TURN, stage.speech_end)]


def _low(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Probability)
    stage.confidence = event.probability
    stage.request = None
    return []


def _force(stage: TurnStage, event: Input) -> list[Output]:
    return stage._end(EndTrigger.MANUAL)


def _keep(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Transcript)
    stage.text, stage.words = event.text, event.words
    return []


def _update(stage: TurnStage, event: Input) -> list[Output]:
    assert isinstance(event, Transcript)
    stage.text, stage.words = event.text, event.words
    stage.last_update_end = event.audio_end
    return [stage._event(TurnEventKind.UPDATE, event.audio_end)]


def _changed_after_eager(stage: TurnStage, event: Input) -> list[Output]:
    """New words after the early end: the early transcript is wrong, so the turn resumes
    (an ``EndOfTurn`` must carry the transcript its ``EagerEndOfTurn`` had)."""
    assert isinstance(event, Transcript)
    stage.text, stage.words = event.text, event.words
    stage.last_update_end = event.audio_end
    stage.eager_text = None
    stage.asked_at = None  # the next pause observation asks the model again
    return [stage._event(TurnEventKind.TURN_RESUMED, event.audio_end)]


_I, _S, _P, _E = TurnState.IDLE, TurnState.SPEAKING, TurnState.PAUSED, TurnState.EAGER

RULES: dict[tuple[TurnState, Kind], tuple[TurnState, _Step]] = {
    # No turn open: only speech matters. Late answers, text and pauses belong to no turn;
    # forcing an end with no turn open has nothing to end.
    (_I, Kind.SPEECH): (_S, _open),
    (_I, Kind.PAUSE): (_I, _nothing),
    (_I, Kind.PAUSE_SCORE): (_I, _nothing),
    (_I, Kind.PAUSE_TIMEOUT): (_I, _nothing),
    (_I, Kind.END): (_I, _nothing),
    (_I, Kind.EAGER): (_I, _nothing),
    (_I, Kind.LOW): (_I, _nothing),
    (_I, Kind.STALE): (_I, _nothing),
    (_I, Kind.TRANSCRIPT): (_I, _nothing),
    (_I, Kind.TRANSCRIPT_HOLD): (_I, _nothing),
    (_I, Kind.FORCE): (_I, _nothing),
    # Speaking: a pause begins (and may be long enough to ask about at once).
    (_S, Kind.SPEECH): (_S, _nothing),
    (_S, Kind.PAUSE): (_P, _pause_begins),
    (_S, Kind.PAUSE_SCORE): (_P, _pause_begins_scored),
    (_S, Kind.PAUSE_TIMEOUT): (_I, _timeout),
    # No request is open while speaking, so every answer is stale.
    (_S, Kind.END): (_S, _nothing),
    (_S, Kind.EAGER): (_S, _nothing),
    (_S, Kind.LOW): (_S, _nothing),
    (_S, Kind.STALE): (_S, _nothing),
    (_S, Kind.TRANSCRIPT): (_S, _update),
    (_S, Kind.TRANSCRIPT_HOLD): (_S, _keep),
    (_S, Kind.FORCE): (_I, _force),
    # Paused: the model decides, or the timeout, or speech comes back (no event: nothing
    # was announced).
    (_P, Kind.SPEECH): (_S, _go_on),
    (_P, Kind.PAUSE): (_P, _nothing),
    (_P, Kind.PAUSE_SCORE): (_P, _score),
    (_P, Kind.PAUSE_TIMEOUT): (_I, _timeout),
    (_P, Kind.END): (_I, _model_end),
    (_P, Kind.EAGER): (_E, _eager),
    (_P, Kind.LOW): (_P, _low),
    (_P, Kind.STALE): (_P, _nothing),
    (_P, Kind.TRANSCRIPT): (_P, _update),
    (_P, Kind.TRANSCRIPT_HOLD): (_P, _keep),
    (_P, Kind.FORCE): (_I, _force),
    # Early end announced: it is confirmed (model, timeout, client) or taken back (speech,
    # or new words). A lower probability does not take it back: only speech does.
    (_E, Kind.SPEECH): (_S, _resume),
    (_E, Kind.PAUSE): (_E, _nothing),
    (_E, Kind.PAUSE_SCORE): (_E, _score),
    (_E, Kind.PAUSE_TIMEOUT): (_I, _timeout),
    (_E, Kind.END): (_I, _model_end),
    (_E, Kind.EAGER): (_E, _low),
    (_E, Kind.LOW): (_E, _low),
    (_E, Kind.STALE): (_E, _nothing),
    (_E, Kind.TRANSCRIPT): (_P, _changed_after_eager),
    (_E, Kind.TRANSCRIPT_HOLD): (_E, _nothing),
    (_E, Kind.FORCE): (_I, _force),
}
"""(state, input kind) -> (next state, step): every pair named."""
