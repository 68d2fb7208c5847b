"""The segmented route: every channel through a VAD and its own segmenter.

The route asks for VAD probabilities by handing out frames (``push``, ``drain``) and takes
them back (``segment``); whoever runs the VAD (the shared engine, or a blocking model
offline) is not its concern. Each channel's segments become inferences: a final for every
segment, an interim for the audio so far when interim results are on, a newer interim (or
the final) withdrawing the older one.

A model at another rate than 16 kHz gets each segment cut from the channel's audio
resampled as it streams (``ModelRateTap``). The resampler's output lags its input by its
filter's delay, so a segment whose audio has not all come out yet is held, with the
channel's work after it, until a later message (or ``finalize``, or the end) completes it.

Speculative finals (``speculate``, for a model at the VAD's 16 kHz): once an open segment's
pause has its end padding in, the segment as any close in that pause would cut it is
decoded at once (``Infer(speculative=True)``), so that its final is usually decoded when
it is asked for, by ``finalize`` (v1 ``finalize``, Deepgram's ``Finalize``, OpenAI's
commit) or by the segment's natural end. A final of exactly that audio adopts the
speculative result (``Adopt``) instead of decoding again; speech resuming in the pause
withdraws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio.framing import Framer
from streamer.audio.resample import ChannelResamplers
from streamer.events import Finalized, SpeechEnded, SpeechStarted
from streamer.route.model_rate import ModelRateTap
from streamer.route.work import Adopt, Infer, Post, Withdraw, Work
from streamer.segmentation import segmenter
from streamer.segmentation.segmenter import Segmenter, VadParams
from streamer.segmentation.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE

__all__ = ["Frames", "SegmentedRoute"]

Frames = NDArray[np.float32]
"""``(k, FRAME_SAMPLES)`` consecutive frames of one channel (``k`` may be 0)."""


@dataclass(frozen=True, slots=True)
class _Cut:
    """An inference held until the model-rate audio of ``[start, end)`` (16 kHz) is out."""

    key: int
    start: int
    end: int
    final: bool
    forced: bool


@dataclass(frozen=True, slots=True)
class _Speculation:
    """A speculative final of ``[start, end)`` (16 kHz samples) outstanding as ``key``."""

    key: int
    start: int
    end: int


class _Channel:
    __slots__ = ("framer", "held", "interim", "segmenter", "speculation", "tap")

    def __init__(
        self,
        params: VadParams,
        interim: bool,
        model_rate: int,
        speculate: bool,
        speculate_pad_ms: float | None,
    ) -> None:
        self.framer = Framer(FRAME_SAMPLES)
        self.tap = ModelRateTap(model_rate) if model_rate != VAD_SAMPLE_RATE else None
        self.segmenter = Segmenter(
            params,
            interim=interim,
            # A speculative cut would have to wait for the resampler like any other.
            speculate=speculate and self.tap is None,
            speculate_pad_ms=speculate_pad_ms,
            sample_rate=VAD_SAMPLE_RATE,
        )
        self.interim: int | None = None  # the key of the channel's outstanding interim
        self.speculation: _Speculation | None = None
        self.held: list[_Cut | Work] = []  # in order; only with a tap


class SegmentedRoute:
    """Decoded blocks in, VAD frames out; frames and their probabilities in, work out."""

    __slots__ = (
        "_channels", "_forcing", "_keys", "_mark", "_resamplers", "_segments",
        "input_rate", "samples_in",
    )  # fmt: skip

    def __init__(
        self,
        channels: int,
        input_rate: int,
        model_rate: int,
        params: VadParams | None = None,
        *,
        interim: bool = False,
        mark_finalize: bool = False,
        segments: bool = True,
        speculate: bool = False,
        speculate_pad_ms: float | None = None,
    ) -> None:
        """``segments`` False: speech starts and ends only, no inference of segments (a
        stream whose turns carry the transcript). ``speculate``: decode each segment's
        final ahead at a pause (see the module), once ``speculate_pad_ms`` of it is in (by
        default the VAD's ``speech_pad_ms``; a segment closing in that pause then ends
        there)."""
        params = params or VadParams()
        self._segments = segments
        self.input_rate = input_rate
        self.samples_in = 0
        """Samples per channel taken so far, at the input's rate."""
        self._resamplers = ChannelResamplers(channels, input_rate, VAD_SAMPLE_RATE)
        self._channels = [
            _Channel(params, interim, model_rate, speculate and segments, speculate_pad_ms)
            for _ in range(channels)
        ]
        self._keys = 0
        self._mark = mark_finalize
        self._forcing = False

    @property
    def channels(self) -> int:
        return len(self._channels)

    def push(self, block: NDArray[np.float32]) -> list[Frames]:
        """The next decoded block ``(channels, n)``: each channel's whole VAD frames, for
        the VAD; hand each channel's back to ``segment`` with their probabilities."""
        self.samples_in += block.shape[1]
        return self._frames(self._resamplers.process(block))

    def drain(self) -> list[Frames]:
        """End of audio: the frames the resamplers' tails complete, as ``push``."""
        return self._frames(self._resamplers.flush())

    def _frames(self, resampled: list[NDArray[np.float32]]) -> list[Frames]:
        frames: list[Frames] = []
        for channel, samples in zip(self._channels, resampled, strict=True):
            if channel.tap is not None:
                channel.tap.feed(samples)
            frames.append(channel.framer.push_block(samples))
        return frames

    def segment(self, channel: int, frames: Frames, probs: NDArray[np.float32]) -> Sequence[Work]:
        """A channel's frames (as handed out, in order) and their speech probabilities.

        The hot path (every 32 ms frame of every stream): most frames cause nothing, and a
        message without events allocates no list for its work.
        """
        work: list[Work] | None = None
        state = self._channels[channel]
        if state.held:
            work = []
            self._release(state, channel, work)
        segmenter = state.segmenter
        listed = probs.tolist()
        if work is not None or not segmenter.push_quiet(frames, listed):
            push = segmenter.push
            for frame, prob in zip(frames, listed, strict=True):
                if events := push(frame, prob):
                    if work is None:
                        work = []
                    self._handle(channel, events, work)
        if state.tap is not None:
            self._forget(state)
        return () if work is None else work

    def finalize(self) -> list[Work]:
        """Close every channel's open segment now (``finalize``); the stream goes on."""
        work: list[Work] = []
        for channel in range(len(self._channels)):
            work += self.finalize_channel(channel)
        return work

    def finalize_channel(self, channel: int) -> list[Work]:
        """Everything one channel received so far counts, the partial VAD frame included."""
        state = self._channels[channel]
        work: list[Work] = []
        if state.tap is not None:
            state.tap.flush(restart=True)
            self._release(state, channel, work)
        self._forcing = self._mark
        try:
            self._handle(channel, state.segmenter.flush(state.framer.take_tail()), work)
        finally:
            self._forcing = False
        if self._mark:
            forced = sum(
                isinstance(w, Adopt) or (isinstance(w, Infer) and w.final and not w.speculative)
                for w in work
            )
            work.append(
                Post(Finalized(channel, round(self.samples_in / self.input_rate, 6), forced))
            )
        return work

    def end_channel(self, channel: int) -> list[Work]:
        """End of audio for one channel (after its ``drain`` frames were segmented)."""
        state = self._channels[channel]
        work: list[Work] = []
        if state.tap is not None:
            state.tap.flush(restart=False)
            self._release(state, channel, work)
        self._handle(channel, state.segmenter.flush(state.framer.take_tail()), work)
        return work

    def _handle(self, channel: int, events: list[segmenter.Event], work: list[Work]) -> None:
        state = self._channels[channel]
        # Behind a held inference, the channel's work waits too, to keep its order.
        out: list[Any] = state.held if state.held else work  # Work, or _Cut while held
        for event in events:
            if isinstance(event, segmenter.SpeechStarted):
                out.append(Post(SpeechStarted(channel, _seconds(event.start))))
            elif isinstance(event, segmenter.SpeechEnded):
                out.append(Post(SpeechEnded(channel, _seconds(event.end))))
            elif not self._segments:
                continue
            elif isinstance(event, segmenter.Paused):
                self._keys += 1
                state.speculation = _Speculation(self._keys, event.start, event.end)
                out.append(
                    Infer(
                        self._keys,
                        channel,
                        _seconds(event.start),
                        _seconds(event.end),
                        event.audio,
                        final=True,
                        speculative=True,
                    )
                )
            elif isinstance(event, segmenter.Resumed):
                if state.speculation is not None:
                    out.append(Withdraw(state.speculation.key))
                    state.speculation = None
            else:
                # Only the newest interim of a segment is worth running.
                if state.interim is not None:
                    out.append(Withdraw(state.interim))
                    state.interim = None
                forced = event.is_final and self._forcing
                if event.is_final and (spec := state.speculation) is not None:
                    state.speculation = None
                    if (spec.start, spec.end) == (event.start, event.end):
                        out.append(Adopt(spec.key, forced))  # the same samples: decoded
                        continue
                    out.append(Withdraw(spec.key))
                self._keys += 1
                if not event.is_final:
                    state.interim = self._keys
                tap = state.tap
                if tap is None:
                    out.append(
                        Infer(
                            self._keys,
                            channel,
                            _seconds(event.start),
                            _seconds(event.end),
                            event.audio,
                            event.is_final,
                            forced,
                        )
                    )
                elif out is work and tap.covers(event.end):
                    out.append(
                        _cut(
                            tap, channel, self._keys, event.start, event.end, event.is_final, forced
                        )
                    )
                else:
                    out = state.held
                    out.append(_Cut(self._keys, event.start, event.end, event.is_final, forced))

    @staticmethod
    def _release(state: _Channel, channel: int, work: list[Work]) -> None:
        """The held work, up to the first inference whose audio is not all out yet."""
        tap, held = state.tap, state.held
        assert tap is not None
        taken = 0
        for item in held:
            if isinstance(item, _Cut):
                if not tap.covers(item.end):
                    break
                work.append(
                    _cut(tap, channel, item.key, item.start, item.end, item.final, item.forced)
                )
            else:
                work.append(item)
            taken += 1
        del held[:taken]

    @staticmethod
    def _forget(state: _Channel) -> None:
        assert state.tap is not None
        keep = state.segmenter.earliest_start
        for item in state.held:
            if isinstance(item, _Cut):
                keep = min(keep, item.start)
        state.tap.forget_before(keep)


def _cut(
    tap: ModelRateTap, channel: int, key: int, start: int, end: int, final: bool, forced: bool
) -> Infer:
    return Infer(key, channel, _seconds(start), _seconds(end), tap.take(start, end), final, forced)


def _seconds(samples: int) -> float:
    return round(samples / VAD_SAMPLE_RATE, 6)
