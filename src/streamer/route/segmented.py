"""The segmented route: every channel through a VAD and its own segmenter.

The route asks for VAD probabilities by handing out frames (``push``, ``drain``) and takes
them back (``segment``); whoever runs the VAD (the shared engine, or a blocking model
offline) is not its concern. Each channel's segments become inferences: a final for every
segment, an interim for the audio so far when interim results are on, a newer interim (or
the final) withdrawing the older one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr
from numpy.typing import NDArray

from streamer.audio.framing import Framer
from streamer.audio.resample import ChannelResamplers
from streamer.events import Finalized, SpeechEnded, SpeechStarted
from streamer.route.work import Infer, Post, Withdraw, Work
from streamer.segmentation import segmenter
from streamer.segmentation.segmenter import Segmenter, VadParams
from streamer.segmentation.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE

__all__ = ["Frames", "SegmentedRoute"]

Frames = NDArray[np.float32]
"""``(k, FRAME_SAMPLES)`` consecutive frames of one channel (``k`` may be 0)."""


class _Channel:
    __slots__ = ("framer", "interim", "segmenter")

    def __init__(self, params: VadParams, interim: bool) -> None:
        self.framer = Framer(FRAME_SAMPLES)
        self.segmenter = Segmenter(params, interim=interim, sample_rate=VAD_SAMPLE_RATE)
        self.interim: int | None = None  # the key of the channel's outstanding interim


class SegmentedRoute:
    """Decoded blocks in, VAD frames out; frames and their probabilities in, work out."""

    __slots__ = (
        "_channels", "_forcing", "_keys", "_mark", "_model_rate", "_resamplers",
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
    ) -> None:
        params = params or VadParams()
        self.input_rate = input_rate
        self.samples_in = 0
        """Samples per channel taken so far, at the input's rate."""
        self._model_rate = model_rate
        self._resamplers = ChannelResamplers(channels, input_rate, VAD_SAMPLE_RATE)
        self._channels = [_Channel(params, interim) for _ in range(channels)]
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
        return [
            channel.framer.push_block(samples)
            for channel, samples in zip(
                self._channels, self._resamplers.process(block), strict=True
            )
        ]

    def drain(self) -> list[Frames]:
        """End of audio: the frames the resamplers' tails complete, as ``push``."""
        return [
            channel.framer.push_block(tail)
            for channel, tail in zip(self._channels, self._resamplers.flush(), strict=True)
        ]

    def segment(self, channel: int, frames: Frames, probs: NDArray[np.float32]) -> Sequence[Work]:
        """A channel's frames (as handed out, in order) and their speech probabilities.

        The hot path (every 32 ms frame of every stream): most frames cause nothing, and a
        message without events allocates no list for its work.
        """
        work: list[Work] | None = None
        push = self._channels[channel].segmenter.push
        for frame, prob in zip(frames, probs.tolist(), strict=True):
            if events := push(frame, prob):
                if work is None:
                    work = []
                self._handle(channel, events, work)
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
        self._forcing = self._mark
        try:
            self._handle(channel, state.segmenter.flush(state.framer.take_tail()), work)
        finally:
            self._forcing = False
        if self._mark:
            forced = sum(isinstance(w, Infer) and w.final for w in work)
            work.append(
                Post(Finalized(channel, round(self.samples_in / self.input_rate, 6), forced))
            )
        return work

    def end_channel(self, channel: int) -> list[Work]:
        """End of audio for one channel (after its ``drain`` frames were segmented)."""
        state = self._channels[channel]
        work: list[Work] = []
        self._handle(channel, state.segmenter.flush(state.framer.take_tail()), work)
        return work

    def _handle(self, channel: int, events: list[segmenter.Event], work: list[Work]) -> None:
        state = self._channels[channel]
        for event in events:
            if isinstance(event, segmenter.SpeechStarted):
                work.append(Post(SpeechStarted(channel, _seconds(event.start))))
            elif isinstance(event, segmenter.SpeechEnded):
                work.append(Post(SpeechEnded(channel, _seconds(event.end))))
            else:
                # Only the newest interim of a segment is worth running.
                if state.interim is not None:
                    work.append(Withdraw(state.interim))
                    state.interim = None
                self._keys += 1
                if not event.is_final:
                    state.interim = self._keys
                work.append(
                    Infer(
                        self._keys,
                        channel,
                        _seconds(event.start),
                        _seconds(event.end),
                        self._to_model(event.audio),
                        event.is_final,
                        event.is_final and self._forcing,
                    )
                )

    def _to_model(self, audio: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._model_rate == VAD_SAMPLE_RATE:
            return audio
        resampled: NDArray[np.float32] = soxr.resample(
            audio, VAD_SAMPLE_RATE, self._model_rate
        ).astype(np.float32, copy=False)
        return resampled


def _seconds(samples: int) -> float:
    return round(samples / VAD_SAMPLE_RATE, 6)
