"""One channel's turn detection over its VAD frames, sans-I/O: 16 kHz frames and their
speech probabilities in; the turn stage's outputs out, with the audio each needs.

The tracker tells speech from silence itself, frame by frame (the segmenter's pauses are
too long and too late for turns): a turn opens after ``min_speech_frames`` speech frames
in a row, a pause begins at the first frame under ``neg_threshold``, and the stage hears
the pause grow every frame. When the stage asks for a score, the tracker hands back the
last 8 s of audio for the end-of-turn model and, unless the turn's audio was already
decoded up to the same point, the turn's audio for the recognizer (``Score``). The
transcript of a pause is thus decoded once, before the early end is announced, and
reused by the end of the turn when no speech came between.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streamer.turn.features import SAMPLE_RATE, WINDOW_SAMPLES
from streamer.turn.stage import (
    ForceEnd,
    Output,
    Pause,
    Probability,
    ScoreTurn,
    SpeechStarted,
    Transcript,
    TurnEvent,
    TurnSettings,
    TurnStage,
    TurnState,
    WithdrawScore,
    Word,
)

__all__ = ["MAX_TURN_SECONDS", "Decode", "Score", "TurnTracker"]

MAX_TURN_SECONDS = 30.0
"""The longest audio a turn's transcript is decoded from (one recognizer window): a
longer turn's transcript covers its last 30 s."""


@dataclass(frozen=True, slots=True, eq=False)
class Decode:
    """Recognize ``audio`` (16 kHz), the turn's from ``start`` to ``end`` seconds; hand the
    result back with ``TurnTracker.transcript(decode.key, ...)``."""

    key: int
    audio: NDArray[np.float32]
    start: float
    end: float


@dataclass(frozen=True, slots=True, eq=False)
class Score:
    """The stage's ``ScoreTurn``, with its window (the last 8 s of 16 kHz audio) and the
    decode its answer must wait for (None: the transcript in hand is current)."""

    request: int
    window: NDArray[np.float32]
    decode: Decode | None


Step = TurnEvent | Score | WithdrawScore


class TurnTracker:
    """A channel's frames, its turn stage, the audio of its open turn."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_frames: int = 3,
        frame_samples: int = 512,
        pad_frames: int = 6,
    ) -> None:
        self.stage = TurnStage(settings)
        self.threshold = threshold
        self.neg_threshold = neg_threshold
        self.min_speech_frames = min_speech_frames
        self.frame_samples = frame_samples
        self.pad_frames = pad_frames
        """Frames of audio kept either side of a turn's speech for its decode (weak
        onsets and endings score low on the VAD, but the recognizer needs them)."""
        self.position = 0
        """Samples of the channel seen so far."""
        self._recent: deque[NDArray[np.float32]] = deque(maxlen=-(-WINDOW_SAMPLES // frame_samples))
        self._turn: deque[NDArray[np.float32]] = deque(
            maxlen=int(MAX_TURN_SECONDS * SAMPLE_RATE) // frame_samples
        )
        self._speaking = False
        self._onset: int | None = None  # first sample of the speech frames being counted
        self._run = 0
        self._forced_at: int | None = None  # a forced end cut speech here (no pad before)
        self._speech_end = 0  # sample where the current pause began
        self._decoded_to: int | None = None  # the turn's audio decoded up to this sample
        self._decodes = 0
        self._latest_decode = -1

    @property
    def open(self) -> bool:
        """Whether a turn is open."""
        return self.stage.state is not TurnState.IDLE

    @property
    def paused(self) -> bool:
        """Whether a turn is open and its speaker silent."""
        return self.open and not self._speaking

    def settings(self, settings: TurnSettings) -> None:
        """New thresholds, from the next input on."""
        self.stage.settings = settings

    def push(self, frames: NDArray[np.float32], probs: list[float]) -> list[Step]:
        """The next frames of the channel and their speech probabilities."""
        steps: list[Step] = []
        size = self.frame_samples
        for frame, prob in zip(frames, probs, strict=True):
            start = self.position
            self.position += size
            self._recent.append(frame)
            self._turn.append(frame)
            if prob >= self.threshold:
                if not self._speaking:
                    if self._onset is None:
                        self._onset, self._run = start, 0
                    self._run += 1
                    if self._run >= self.min_speech_frames:
                        self._speaking = True
                        onset, self._onset = self._onset, None
                        if not self.open:
                            self._keep_turn_from(onset)
                        steps += self._handle(SpeechStarted(onset / SAMPLE_RATE))
                        continue
            elif prob < self.neg_threshold and self._speaking:
                self._speaking = False
                self._speech_end = start
            elif prob < self.neg_threshold:
                self._onset, self._run = None, 0
            if not self._speaking and self.open:
                steps += self._handle(
                    Pause(self._speech_end / SAMPLE_RATE, self.position / SAMPLE_RATE)
                )
        return steps

    def transcript(self, key: int, text: str, words: tuple[Word, ...]) -> list[Step]:
        """The recognizer's answer to ``Decode(key)`` (an older decode's is dropped)."""
        if key != self._latest_decode:
            return []
        return self._handle(Transcript(text, words, self._decoded_end()))

    def probability(self, request: int, probability: float) -> list[Step]:
        """The end-of-turn model's answer to ``Score(request)``."""
        return self._handle(Probability(request, probability))

    def end_decode(self) -> Decode | None:
        """The decode that brings an open turn's transcript up to now, before it is ended
        (None: it is current, or no turn is open)."""
        if not self.open:
            return None
        end = self._speech_end if not self._speaking else self.position
        return self._decode(end)

    def force_end(self) -> list[Step]:
        """End the open turn now (the client's ``ForceEndTurn``, or the end of the audio).

        Speech that goes on past a forced end opens the next turn with its next frame, from
        the cut on (no pad before it: that audio was the ended turn's), so none of it is
        lost waiting for a pause and a new onset."""
        steps = self._handle(ForceEnd())
        if self._speaking and not self.open:
            self._speaking = False
            self._onset, self._run = self.position, self.min_speech_frames - 1
            self._forced_at = self.position
        return steps

    # -- internals ----------------------------------------------------------------------

    def _keep_turn_from(self, onset: int) -> None:
        """A turn opens at ``onset``: its audio is the frames from there on (and the pad
        before)."""
        pad = 0 if onset == self._forced_at else self.pad_frames
        self._forced_at = None
        frames = (self.position - onset) // self.frame_samples + pad
        kept = list(self._turn)[-frames:] if frames else []
        self._turn.clear()
        self._turn.extend(kept)
        self._decoded_to = None

    def _turn_audio(self, end: int) -> tuple[NDArray[np.float32], int]:
        """The open turn's audio up to sample ``end``, and where it starts."""
        audio = np.concatenate(list(self._turn)) if self._turn else np.zeros(0, np.float32)
        first = self.position - len(audio)
        return audio[: max(0, end - first)], first

    def _decode(self, end: int) -> Decode | None:
        if self._decoded_to == end:
            return None
        audio, first = self._turn_audio(
            min(self.position, end + self.pad_frames * self.frame_samples)
        )
        self._decoded_to = end
        self._latest_decode = key = self._decodes
        self._decodes += 1
        return Decode(key, audio, first / SAMPLE_RATE, end / SAMPLE_RATE)

    def _decoded_end(self) -> float:
        return (self._decoded_to or 0) / SAMPLE_RATE

    def _window(self) -> NDArray[np.float32]:
        if not self._recent:
            return np.zeros(0, np.float32)
        return np.concatenate(list(self._recent))[-WINDOW_SAMPLES:]

    def _handle(
        self, event: SpeechStarted | Pause | Transcript | Probability | ForceEnd
    ) -> list[Step]:
        steps: list[Step] = []
        for output in self.stage.handle(event):
            steps.append(self._step(output))
        if not self.open:
            self._decoded_to = None
        return steps

    def _step(self, output: Output) -> Step:
        if isinstance(output, ScoreTurn):
            decode = self._decode(self._speech_end)
            return Score(output.request, self._window(), decode)
        return output
