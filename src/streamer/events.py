"""What a stream produces, whatever carries it: frozen, slotted dataclasses.

The pipeline, the outbox, the services and telemetry speak only these; a codec turns them
into a wire shape (v1 JSON, v1 protobuf, or another front-end's messages). Times are
seconds of the channel's audio, from sample counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class Route(StrEnum):
    """How a stream's audio reaches the model: every chunk (simple), or speech segments
    found by the VAD (segmented). Codecs name it; the pipeline follows it."""

    SIMPLE = "simple"
    SEGMENTED = "segmented"


@dataclass(frozen=True, slots=True)
class Ready:
    """A stream was admitted and is running."""

    kind: ClassVar[str] = "ready"
    session_id: str
    route: str
    model: str
    model_sample_rate: int
    channels: int
    trace_id: str | None = None
    warnings: tuple[str, ...] = ()
    """What the server ignored or changed in the request (an invalid trace id, say)."""


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """The model's output for ``[start, end)`` seconds of one channel.

    ``output`` holds JSON values only (see ``inference.output``), and none of its keys is
    a field of the v1 ``segment`` event.
    """

    kind: ClassVar[str] = "segment"
    channel: int
    start: float
    end: float
    final: bool = True
    output: Mapping[str, Any] = field(default_factory=dict)
    forced: bool = False
    """A final that a ``finalize`` cut where the audio stopped (not a pause, not the end)."""


SEGMENT_FIELDS = frozenset(("type", "channel", "start_time", "end_time", "is_final"))
"""The fields of the v1 ``segment`` event; model output may not use these keys, so that
every codec can lay the output beside them."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``time`` seconds of the channel's audio."""

    kind: ClassVar[str] = "active"
    channel: int
    time: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Speech ended at ``time`` seconds of the channel's audio."""

    kind: ClassVar[str] = "inactive"
    channel: int
    time: float


@dataclass(frozen=True, slots=True)
class Finalized:
    """A ``finalize`` is complete on ``channel``: its ``forced`` finals (perhaps none) were
    emitted before this. Only streams that ask for it (``StreamOptions.mark_finalize``)
    emit it; ``time`` is where the channel's audio stood."""

    kind: ClassVar[str] = "finalized"
    channel: int
    time: float
    forced: int


@dataclass(frozen=True, slots=True)
class TurnWord:
    """A word of a turn's transcript: its text, confidence and times (seconds)."""

    word: str
    confidence: float
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Turn:
    """What a channel's turn did (streams that asked for turn detection only).

    ``event`` is one of ``TURN_EVENTS``; ``transcript`` and ``words`` are the turn's so
    far, ``audio_window_start``/``end`` its audio (seconds), ``end_of_turn_confidence`` the
    end-of-turn model's latest probability, and ``trigger`` (``EndOfTurn`` only) why it
    ended: ``model``, ``timeout`` or ``manual``.
    """

    kind: ClassVar[str] = "turn"
    channel: int
    event: str
    turn_index: int
    transcript: str
    words: tuple[TurnWord, ...]
    audio_window_start: float
    audio_window_end: float
    end_of_turn_confidence: float
    trigger: str | None = None


TURN_EVENTS = ("StartOfTurn", "Update", "EagerEndOfTurn", "TurnResumed", "EndOfTurn")
"""The values of ``Turn.event``, in the order a turn may give them."""

V1_TURN_EVENTS = dict(
    zip(TURN_EVENTS, ("start", "update", "eager_end", "resumed", "end"), strict=True)
)
"""``Turn.event`` -> the ``event`` of protocol v1's ``turn`` event."""


@dataclass(frozen=True, slots=True)
class StreamError:
    """A failure the client can act on. With a channel and times, it stands for the result
    of that span of audio (a failed inference); without, for the stream or the connection."""

    kind: ClassVar[str] = "error"
    code: str
    message: str
    channel: int | None = None
    start: float | None = None
    end: float | None = None
    retryable: bool | None = None
    """For a failed inference: whether the same audio may succeed if sent again."""
    reason: str | None = None
    """A finer cause than ``code`` (``ClientError.reason``), for front-ends whose wire
    tells such causes apart; not part of the v1 protocol."""


@dataclass(frozen=True, slots=True)
class Done:
    """Every result of the stream has been sent."""

    kind: ClassVar[str] = "done"
    audio_seconds: float


Event = Ready | SegmentResult | SpeechStarted | SpeechEnded | Finalized | Turn | StreamError | Done
"""Everything a stream emits, in the order its audio produced it."""
