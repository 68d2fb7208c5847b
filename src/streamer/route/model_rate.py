"""One channel's audio at the model's rate, resampled as it streams (16 kHz in).

The segmented route works at the VAD's 16 kHz; a model at another rate gets each
segment's audio cut from this stream rather than resampled segment by segment. Output
lags input by the filter's delay, so a segment may have to wait for the next message (or
the end of the audio) before its audio is whole: ``covers`` says whether it is. Memory is
bounded by what a segment may still take: ``forget_before``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from streamer.audio.resample import Resampler
from streamer.segmentation.vad import VAD_SAMPLE_RATE

__all__ = ["ModelRateTap"]


class ModelRateTap:
    """The channel's 16 kHz samples at ``rate``, indexed by 16 kHz sample."""

    __slots__ = ("_base", "_buf", "_fill", "_in", "_rate", "_resampler")

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._resampler = Resampler(VAD_SAMPLE_RATE, rate)
        self._buf = np.empty(rate, dtype=np.float32)  # grows as segments need
        self._base = 0  # the model-rate index of _buf[0]
        self._fill = 0
        self._in = 0  # 16 kHz samples fed

    def index(self, sample: int) -> int:
        """The model-rate index of a 16 kHz sample index."""
        return (sample * self._rate + VAD_SAMPLE_RATE // 2) // VAD_SAMPLE_RATE

    def feed(self, samples: NDArray[np.float32]) -> None:
        self._in += len(samples)
        self._append(self._resampler.process(samples))

    def covers(self, end: int) -> bool:
        """Whether the audio up to 16 kHz sample ``end`` has come out of the filter."""
        return self.index(end) <= self._base + self._fill

    def take(self, start: int, end: int) -> NDArray[np.float32]:
        """A copy of ``[start, end)`` (16 kHz indices) at the model's rate; ``covers(end)``
        must hold, and ``start`` must not be before what was forgotten."""
        a, b = self.index(start) - self._base, self.index(end) - self._base
        if a < 0 or b > self._fill:
            raise ValueError(f"[{start}, {end}) is not held")
        return self._buf[a:b].copy()

    def flush(self, *, restart: bool) -> None:
        """Everything fed so far comes out (``finalize``, the end of the audio): the
        filter is flushed, and with ``restart`` a new one takes the audio that follows.
        The output is trimmed or padded to the exact length of the input at this rate, so
        that indices keep their meaning."""
        self._append(self._resampler.flush())
        target = self.index(self._in) - self._base
        if self._fill > target:
            self._fill = max(target, 0)
        elif self._fill < target:
            self._append(np.zeros(target - self._fill, dtype=np.float32))
        if restart:
            self._resampler = Resampler(VAD_SAMPLE_RATE, self._rate)

    def forget_before(self, sample: int) -> None:
        """No segment will take audio before 16 kHz sample ``sample`` any more."""
        drop = min(self.index(sample) - self._base, self._fill)
        if drop <= 0 or drop < len(self._buf) // 2:
            return  # compacting costs a copy: only when it frees half the buffer
        keep = self._fill - drop
        self._buf[:keep] = self._buf[drop : self._fill]
        self._base += drop
        self._fill = keep

    def _append(self, out: NDArray[np.float32]) -> None:
        n = len(out)
        if not n:
            return
        end = self._fill + n
        if end > len(self._buf):
            grown = np.empty(max(end, 2 * len(self._buf)), dtype=np.float32)
            grown[: self._fill] = self._buf[: self._fill]
            self._buf = grown
        self._buf[self._fill : end] = out
        self._fill = end
