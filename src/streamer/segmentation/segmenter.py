"""Speech segmentation from per-frame VAD probabilities: a synchronous state machine.

Frames and their speech probabilities go in, in audio order; events come out. All times
are sample indices since the stream's start, counted by the segmenter itself, so any
split of the audio into messages gives the same segments.

States::

    SILENCE --p >= threshold--> PENDING --speech reaches min_speech--> SPEECH
       ^                           |                                     |
       +--- silence >= min_silence-+ (dropped, nothing emitted)          |
       +--------------------- silence >= min_silence: SpeechEnded, final Segment

Hysteresis: a frame at or above ``threshold`` is speech, one below ``exit_threshold`` is
silence, and one in between keeps whatever the previous frame was. The pause that ends a
segment starts at the first silent frame and is cancelled only by a frame at or above
``threshold``.

A segment that would outgrow ``max_segment_s`` is ended there; if speech goes on, the
next segment starts at the same sample, without padding.

Speech is confirmed once ``min_speech_ms`` have passed from its first speech frame to the
end of a speech frame (short pauses included). Events for one segment, in order:
``SpeechStarted`` on confirmation; with interim results, a non-final segment each time the
segment's audio passes another ``interim_interval_s`` (skipped in pauses, where nothing
new was said); then ``SpeechEnded`` and the final segment, whose ``start`` and ``end``
equal the two events' sample indices. Segments never overlap.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Event",
    "Paused",
    "Resumed",
    "Segment",
    "Segmenter",
    "SpeechEnded",
    "SpeechStarted",
    "VadBounds",
    "VadParams",
    "clamp",
]

Float32Array = NDArray[np.float32]

_MIN_EXIT_THRESHOLD: Final = 0.01
_HYSTERESIS: Final = 0.15
# Room a segment keeps beyond its longest possible confirmation, so that a forced split
# never comes before speech is confirmed (more than two 512-sample frames at 16 kHz).
_SPLIT_MARGIN_MS: Final = 100

SPECULATIVE_PAD_MS: Final = 64.0
"""The default ``speculate_pad_ms`` of a server's streams (``stream.speculative_pad_ms``):
short enough that a voice agent's ``Finalize``, about 200 ms after its own VAD hears the
speaker stop, finds the speculative decode started (docs/architecture.md)."""


@dataclass(frozen=True, slots=True)
class VadParams:
    """How speech is told from silence and cut into segments.

    The defaults suit conversational speech going to a recogniser:

    - ``threshold`` 0.5 and ``exit_threshold`` 0.35: Silero's own operating point; the
      0.15 hysteresis keeps brief dips inside words from starting a pause.
    - ``min_speech_ms`` 250: clicks, coughs and line noise rarely last a quarter of a
      second of voiced probability; a short word ("yes", "no") does.
    - ``min_silence_ms`` 500: pauses inside a sentence (stop closures, the gap between
      "front" and "center", breaths, short hesitations) are mostly under 300 ms, while a
      turn or sentence boundary is longer; 500 ms bridges the former and ends a segment
      about half a second after the speaker stops, which keeps replies prompt.
    - ``speech_pad_ms`` 200: weak onsets and endings (f, s, h, trailing fricatives) score
      low on the VAD but a recogniser needs them. It must not exceed ``min_silence_ms``,
      so the end padding has always arrived when a segment closes.
    - ``max_segment_s`` 30: one Whisper-style window; longer speech is split.
    - ``interim_interval_s`` 0.5: two updates a second while someone speaks.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    """Below this a frame is silence; ``None`` means ``threshold - 0.15`` (at least 0.01)."""
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    speech_pad_ms: int = 200
    max_segment_s: float = 30.0
    interim_interval_s: float = 0.5

    @property
    def exit_threshold(self) -> float:
        """The threshold below which a frame counts as silence."""
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - _HYSTERESIS, _MIN_EXIT_THRESHOLD)


@dataclass(frozen=True, slots=True)
class VadBounds:
    """Server-side limits on the parameters a client may choose in ``start``."""

    threshold_min: float = 0.05
    threshold_max: float = 0.95
    min_speech_ms_max: int = 2000
    min_silence_ms_min: int = 100
    min_silence_ms_max: int = 5000
    speech_pad_ms_max: int = 1000
    max_segment_s_min: float = 1.0
    max_segment_s_max: float = 120.0
    interim_interval_s_min: float = 0.1
    interim_interval_s_max: float = 120.0


def _within(name: str, value: float, low: float, high: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return min(max(value, low), high)


def clamp(params: VadParams, bounds: VadBounds | None = None) -> VadParams:
    """Bring client-chosen parameters within ``bounds``; the result always works.

    Out-of-range values are moved to the nearest bound rather than refused; besides the
    bounds, the exit threshold is kept at or below the threshold, the padding at or below
    the minimum silence, and the longest segment long enough to hold a confirmation.
    Raises ``ValueError`` only for values that are not finite numbers.
    """
    b = bounds or VadBounds()
    threshold = _within("threshold", params.threshold, b.threshold_min, b.threshold_max)
    neg = params.neg_threshold
    if neg is not None:
        neg = _within("neg_threshold", neg, _MIN_EXIT_THRESHOLD, threshold)
    min_speech = round(_within("min_speech_ms", params.min_speech_ms, 0, b.min_speech_ms_max))
    min_silence = round(
        _within("min_silence_ms", params.min_silence_ms, b.min_silence_ms_min, b.min_silence_ms_max)
    )
    pad = round(
        _within("speech_pad_ms", params.speech_pad_ms, 0, min(b.speech_pad_ms_max, min_silence))
    )
    longest_confirmation_s = (pad + min_speech + min_silence + _SPLIT_MARGIN_MS) / 1000
    max_segment = _within(
        "max_segment_s",
        params.max_segment_s,
        max(b.max_segment_s_min, longest_confirmation_s),
        max(b.max_segment_s_max, longest_confirmation_s),
    )
    interim = _within(
        "interim_interval_s",
        params.interim_interval_s,
        b.interim_interval_s_min,
        b.interim_interval_s_max,
    )
    return VadParams(
        threshold=threshold,
        neg_threshold=neg,
        min_speech_ms=min_speech,
        min_silence_ms=min_silence,
        speech_pad_ms=pad,
        max_segment_s=max_segment,
        interim_interval_s=interim,
    )


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech was confirmed; the segment starts at sample ``start`` (padding included)."""

    start: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The open segment ends at sample ``end`` (exclusive, padding included)."""

    end: int


@dataclass(frozen=True, slots=True, eq=False)
class Segment:
    """Audio of samples ``[start, end)``; final once, or interim (the audio so far).

    Compared by identity: it holds an array.
    """

    start: int
    end: int
    audio: Float32Array
    is_final: bool


@dataclass(frozen=True, slots=True, eq=False)
class Paused:
    """Speech paused and the end padding has arrived: were the open segment to close in
    this pause (at its natural end, a forced split, or ``flush``), it would be exactly
    ``[start, end)`` with ``audio``. Only with ``speculate``; once per pause."""

    start: int
    end: int
    audio: Float32Array


@dataclass(frozen=True, slots=True)
class Resumed:
    """Speech came back in the pause a ``Paused`` announced: the segment goes on past it."""


Event = SpeechStarted | SpeechEnded | Segment | Paused | Resumed


class _State(Enum):
    SILENCE = "silence"
    PENDING = "pending"  # speech seen, not yet long enough to announce
    SPEECH = "speech"  # announced; a segment is open


class _Ring:
    """The most recent ``capacity`` samples, for padding in front of a segment.

    It keeps the arrays written, not copies of them (the hot path: one write a frame), so
    a caller must not change an array once written; ``last`` copies.
    """

    __slots__ = ("_cap", "_fill", "_parts")

    def __init__(self, capacity: int) -> None:
        self._cap = capacity
        self._parts: deque[Float32Array] = deque()
        self._fill = 0  # samples in _parts: at least what the ring holds, perhaps more

    def write(self, samples: Float32Array) -> None:
        n = len(samples)
        if self._cap == 0 or n == 0:
            return
        parts = self._parts
        parts.append(samples)
        self._fill += n
        while self._fill - len(parts[0]) >= self._cap:
            self._fill -= len(parts.popleft())

    def last(self, n: int) -> Float32Array:
        """A copy of the last ``n`` samples written (``n`` at most what is held)."""
        if n > min(self._fill, self._cap):
            raise ValueError(f"asked for {n} samples, {min(self._fill, self._cap)} held")
        pieces: list[Float32Array] = []
        need = n
        for part in reversed(self._parts):
            if need == 0:
                break
            take = min(len(part), need)
            pieces.append(part[len(part) - take :])
            need -= take
        if not pieces:
            return np.empty(0, dtype=np.float32)
        pieces.reverse()  # exactly n samples: one concatenate copies them
        return np.concatenate(pieces)


class _Audio:
    """The open segment's samples so far, as the arrays appended (not copied, as the
    ring: a caller must not change an array once appended); ``head`` copies."""

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: list[Float32Array] = []
        self.size = 0

    def reset(self, start: Float32Array) -> None:
        self._parts = [start] if len(start) else []
        self.size = len(start)

    def append(self, samples: Float32Array) -> None:
        self._parts.append(samples)
        self.size += len(samples)

    def head(self, n: int) -> Float32Array:
        """A copy of the first ``n`` samples (at most ``size``)."""
        parts = self._parts
        k = len(parts)
        over = self.size - n  # samples past the head: a few frames at most, so count back
        while k and over >= len(parts[k - 1]):
            k -= 1
            over -= len(parts[k])
        if k == 0:
            return np.empty(0, dtype=np.float32)
        out = np.concatenate(parts[:k]) if k > 1 else parts[0].copy()
        return out[: len(out) - over] if over > 0 else out


class Segmenter:
    """Turns frames and their speech probabilities into speech events for one channel.

    Pure and synchronous. Memory is bounded: the open segment's audio (at most
    ``max_segment_s``) and a ring of ``speech_pad_ms`` of recent audio for the padding
    before a segment; nothing else of the stream is kept.
    """

    def __init__(
        self,
        params: VadParams,
        *,
        interim: bool = False,
        speculate: bool = False,
        speculate_pad_ms: float | None = None,
        sample_rate: int = 16000,
        frame_samples: int = 512,
    ) -> None:
        """``speculate``: announce each pause of an open segment once ``speculate_pad_ms``
        of it is in (``Paused``; at most, and by default, ``speech_pad_ms``), and speech
        resuming after it (``Resumed``), so that the segment's final can be decoded before
        it is asked for. A segment that closes in an announced pause ends where the
        announcement said: with a shorter ``speculate_pad_ms`` its end padding is that."""
        if sample_rate <= 0 or frame_samples <= 0:
            raise ValueError("sample_rate and frame_samples must be positive")
        self.params = params
        self.interim = interim
        self.speculate = speculate
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._threshold = params.threshold
        self._exit = params.exit_threshold
        self._min_speech = self._samples(params.min_speech_ms / 1000)
        self._min_silence = self._samples(params.min_silence_ms / 1000)
        self._pad = self._samples(params.speech_pad_ms / 1000)
        self._max = self._samples(params.max_segment_s)
        self._interval = max(self._samples(params.interim_interval_s), 1)
        self._spec_pad = self._pad
        if speculate_pad_ms is not None:
            self._spec_pad = min(self._pad, max(0, self._samples(speculate_pad_ms / 1000)))
        self._check()

        self._ring = _Ring(self._pad)
        self._audio = _Audio()
        self._state = _State.SILENCE
        self._position = 0  # samples consumed: the index of the next sample
        self._prev_end = 0  # where the last segment ended; the next may not start before
        self._start = 0  # the open segment's first sample, padding included
        self._voiced_start = 0  # the first speech frame of a pending segment
        self._pause: int | None = None  # first sample of the pause under way, if any
        self._next_interim = 0  # segment length at which the next interim is due
        self._continues = False  # a forced split just ended a segment in mid-speech
        self._paused: int | None = None  # the cut a Paused announced for this pause

    def _samples(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)

    def _check(self) -> None:
        p = self.params
        if not 0.0 < self._threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self._threshold}")
        if not 0.0 <= self._exit <= self._threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {self._exit}")
        if self._min_speech < 0:
            raise ValueError(f"min_speech_ms must not be negative, got {p.min_speech_ms}")
        if self._min_silence < 1:
            raise ValueError(f"min_silence_ms must be positive, got {p.min_silence_ms}")
        if not 0 <= self._pad <= self._min_silence:
            raise ValueError(f"speech_pad_ms must be in [0, min_silence_ms], got {p.speech_pad_ms}")
        if not p.interim_interval_s > 0:
            raise ValueError(f"interim_interval_s must be positive, got {p.interim_interval_s}")
        # A pending segment can grow to pad + min_speech + min_silence + a frame before it
        # is confirmed; a forced split must not come earlier.
        needed = self._pad + self._min_speech + self._min_silence + 2 * self.frame_samples
        if self._max < needed:
            raise ValueError(
                f"max_segment_s must be at least {needed / self.sample_rate:.3f} s "
                f"with these parameters, got {p.max_segment_s}"
            )

    @property
    def position(self) -> int:
        """Samples consumed so far; the index of the next sample."""
        return self._position

    @property
    def earliest_start(self) -> int:
        """The earliest sample the open segment, or any later one, may include (padding
        included): audio before it will never be part of a segment."""
        if self._state is not _State.SILENCE:
            return self._start
        return max(self._position - self._pad, self._prev_end, 0)

    @property
    def active(self) -> bool:
        """Whether a segment has been announced and not yet ended."""
        return self._state is _State.SPEECH

    def push(self, frame: Float32Array, prob: float) -> list[Event]:
        """Add the next frame and its speech probability; return the events it causes.

        The segmenter keeps the frame itself, not a copy, until its segment is out: the
        caller hands it over and must not change it afterwards."""
        if frame.shape != (self.frame_samples,):
            raise ValueError(f"a frame must be ({self.frame_samples},), got {frame.shape}")
        begin = self._position
        end = begin + self.frame_samples
        events: list[Event] = []

        if self._state is _State.SILENCE:
            continues, self._continues = self._continues, False
            if continues and prob >= self._exit:
                # Still speech after a forced split: the next segment carries straight on.
                self._open(begin, padded=False)
                self._audio.append(frame)
                self._confirm(events)
            elif prob >= self._threshold:
                self._open(begin, padded=True)
                self._audio.append(frame)
                if end - self._voiced_start >= self._min_speech:
                    self._confirm(events)
        else:
            self._audio.append(frame)
            if prob >= self._threshold or (self._pause is None and prob >= self._exit):
                if self._paused is not None:
                    self._paused = None
                    events.append(Resumed())
                self._pause = None
                if self._state is _State.PENDING and end - self._voiced_start >= self._min_speech:
                    self._confirm(events)
            else:
                if self._pause is None:
                    self._pause = begin
                if end - self._pause >= self._min_silence:
                    if self._state is _State.SPEECH:
                        self._close(self._pause_end(end), events)
                    self._state = _State.SILENCE
                elif (
                    self.speculate
                    and self._paused is None
                    and self._state is _State.SPEECH
                    and end >= self._pause + self._spec_pad
                ):
                    # Any close in this pause ends here now: the same samples, so a decode
                    # of them now stands for the final.
                    cut = self._paused = self._pause + self._spec_pad
                    events.append(Paused(self._start, cut, self._audio.head(cut - self._start)))

        self._ring.write(frame)
        self._position = end

        if self._state is _State.SPEECH:
            if end - self._start + self.frame_samples > self._max:
                self._split(events)
            elif self.interim and self._pause is None:
                length = end - self._start
                if length >= self._next_interim:
                    events.append(Segment(self._start, end, self._audio.head(length), False))
                    self._next_interim = (length // self._interval + 1) * self._interval
        return events

    def push_quiet(self, frames: Float32Array, probs: list[float]) -> bool:
        """Take ``k`` frames ``(k, frame_samples)`` at once if none of them can cause an
        event, as ``push`` would have taken them one by one; False, with nothing taken,
        if one might. The hot path: most frames of a stream are silence before or between
        segments, speech going on, or a pause too short yet to end its segment.

        A frame can cause nothing when the state cannot change: in silence (not just
        after a forced split) every frame is under the threshold; in an announced segment
        with no pause every frame is at least the exit threshold, and the last ends before
        the next interim and the longest segment's split; in a pause every frame is under
        the threshold, and the last ends before the pause would end the segment or
        (speculating) be announced."""
        count = len(probs)
        if count == 0 or len(frames) != count:
            return False
        state = self._state
        end = self._position + count * self.frame_samples
        if state is _State.SILENCE:
            if self._continues or max(probs) >= self._threshold:
                return False
        elif state is not _State.SPEECH:
            return False
        elif end - self._start + self.frame_samples > self._max:
            return False
        elif self._pause is None:
            if min(probs) < self._exit:
                return False
            if self.interim and end - self._start >= self._next_interim:
                return False
        else:
            if max(probs) >= self._threshold or end - self._pause >= self._min_silence:
                return False
            if self.speculate and self._paused is None and end >= self._pause + self._spec_pad:
                return False
        if frames.shape[1:] != (self.frame_samples,):
            raise ValueError(f"frames must be (k, {self.frame_samples}), got {frames.shape}")
        samples = frames.reshape(-1)  # one array for the k frames, as the ring keeps them
        if state is _State.SPEECH:
            self._audio.append(samples)
        self._ring.write(samples)
        self._position = end
        return True

    def push_frames(self, frames: Float32Array, probs: Float32Array) -> list[Event]:
        """``push`` for ``k`` frames ``(k, frame_samples)`` and their ``k`` probabilities
        (handed over, as there)."""
        if len(frames) != len(probs):
            raise ValueError(f"{len(frames)} frames but {len(probs)} probabilities")
        events: list[Event] = []
        for frame, prob in zip(frames, probs, strict=True):
            events.extend(self.push(frame, float(prob)))
        return events

    def flush(self, tail: Float32Array | None = None) -> list[Event]:
        """End of the audio so far: close the open segment; keep counting afterwards.

        ``tail`` is a last partial frame (fewer than ``frame_samples`` samples, with no
        probability of its own): it belongs to an open segment, and otherwise only
        advances the sample count. An open segment ends at the end of the audio, or where
        its pause plus padding ends if it is in a pause. A pending segment, never
        announced, is dropped: it has not reached ``min_speech_ms``. Sample counting goes
        on, so more audio may follow (``finalize``); as ever, a later segment's padding
        reaches back no further than the end of the last segment.
        """
        events: list[Event] = []
        if tail is not None and len(tail):
            if tail.ndim != 1 or len(tail) >= self.frame_samples:
                raise ValueError(
                    f"a tail must be 1-D and shorter than {self.frame_samples}, got {tail.shape}"
                )
            if self._state is not _State.SILENCE:
                self._audio.append(tail)
            self._ring.write(tail)
            self._position += len(tail)
        if self._state is _State.SPEECH:
            end = self._position
            if self._pause is not None:
                end = self._pause_end(end)
            self._close(end, events)
        self._state = _State.SILENCE
        self._pause = None
        self._continues = False
        return events

    def _open(self, begin: int, *, padded: bool) -> None:
        start = max(begin - self._pad, self._prev_end, 0) if padded else begin
        self._audio.reset(self._ring.last(begin - start))
        self._start = start
        self._voiced_start = begin
        self._pause = None
        self._state = _State.PENDING

    def _confirm(self, events: list[Event]) -> None:
        self._state = _State.SPEECH
        self._next_interim = self._interval
        events.append(SpeechStarted(self._start))

    def _pause_end(self, limit: int) -> int:
        """Where a segment closing in the pause under way ends (by ``limit`` at most)."""
        assert self._pause is not None
        if self._paused is not None:
            return self._paused
        return min(self._pause + self._pad, limit)

    def _close(self, end: int, events: list[Event]) -> None:
        self._paused = None
        events.append(SpeechEnded(end))
        events.append(Segment(self._start, end, self._audio.head(end - self._start), True))
        self._prev_end = end
        self._state = _State.SILENCE

    def _split(self, events: list[Event]) -> None:
        """The next frame would outgrow ``max_segment_s``: end the segment here.

        In a pause it ends where the pause and its padding do; otherwise right here, and
        if the next frame is still speech a new segment starts with it, unpadded.
        """
        if self._pause is not None:
            self._close(self._pause_end(self._position), events)
        else:
            self._close(self._position, events)
            self._continues = True
