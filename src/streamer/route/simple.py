"""The simple route: every channel cut into chunks of a fixed duration, each one inferred."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from streamer.audio.framing import Framer
from streamer.audio.resample import ChannelResamplers
from streamer.events import Finalized
from streamer.route.work import Infer, Post, Work

__all__ = ["SimpleRoute"]


class SimpleRoute:
    """Decoded blocks in; an ``Infer`` per chunk of ``chunk`` samples at the model's rate
    (the work rate of this route), in audio order, channel by channel."""

    __slots__ = (
        "_framers", "_keys", "_mark", "_positions", "_rate", "_resamplers", "input_rate",
        "samples_in",
    )  # fmt: skip

    def __init__(
        self,
        channels: int,
        input_rate: int,
        model_rate: int,
        chunk_seconds: float,
        *,
        mark_finalize: bool = False,
    ) -> None:
        chunk = max(1, round(chunk_seconds * model_rate))
        self.input_rate = input_rate
        self.samples_in = 0
        """Samples per channel taken so far, at the input's rate."""
        self._rate = model_rate
        self._resamplers = ChannelResamplers(channels, input_rate, model_rate)
        self._framers = [Framer(chunk) for _ in range(channels)]
        self._positions = [0] * channels
        self._keys = 0
        self._mark = mark_finalize

    def push(self, block: NDArray[np.float32]) -> list[Work]:
        """The next decoded block ``(channels, n)``: the chunks it completes."""
        self.samples_in += block.shape[1]
        work: list[Work] = []
        for channel, samples in enumerate(self._resamplers.process(block)):
            for chunk in self._framers[channel].push(samples):
                work.append(self._infer(channel, chunk, forced=False))
        return work

    def finalize(self) -> list[Work]:
        """Infer every channel's partial chunk now; the stream goes on."""
        work: list[Work] = []
        for channel in range(len(self._framers)):
            self._tail(channel, work, forced=self._mark)
            if self._mark:
                forced = sum(isinstance(w, Infer) and w.channel == channel for w in work)
                work.append(Post(Finalized(channel, self._seconds_in(), forced)))
        return work

    def end(self) -> list[Work]:
        """End of audio: the resamplers' tails and the last partial chunks."""
        work: list[Work] = []
        for channel, tail in enumerate(self._resamplers.flush()):
            for chunk in self._framers[channel].push(tail):
                work.append(self._infer(channel, chunk, forced=False))
            self._tail(channel, work, forced=False)
        return work

    def _tail(self, channel: int, work: list[Work], *, forced: bool) -> None:
        tail = self._framers[channel].take_tail()
        if len(tail):
            work.append(self._infer(channel, tail, forced=forced))

    def _infer(self, channel: int, audio: NDArray[np.float32], *, forced: bool) -> Infer:
        start = self._positions[channel]
        end = start + len(audio)
        self._positions[channel] = end
        self._keys += 1
        rate = self._rate
        return Infer(
            self._keys, channel, round(start / rate, 6), round(end / rate, 6), audio, True, forced
        )

    def _seconds_in(self) -> float:
        return round(self.samples_in / self.input_rate, 6)
