"""Streaming sample-rate conversion with libsoxr, one independent stream per channel.

Output length: after :meth:`Resampler.flush`, a stream that took ``n`` samples in has given
``round(n * out_rate / in_rate)`` samples out, within one sample (the tests check it for the
rates the service meets). Output is independent of how the input was chunked: any split of
the same samples gives the same output, equal to ``soxr.resample`` on the whole signal.
"""

from __future__ import annotations

import numpy as np
import soxr
from numpy.typing import NDArray

QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
"""libsoxr's quality presets, fastest first."""

_EMPTY = np.zeros(0, np.float32)
_EMPTY.flags.writeable = False


class Resampler:
    """Converts one channel of float32 samples from ``in_rate`` to ``out_rate``, in chunks.

    Output lags input by the filter's delay; :meth:`flush` ends the stream and returns what
    the filter still holds. A flushed resampler accepts no more input: make a new one.
    With equal rates it passes samples through untouched, without libsoxr.
    ``samples_in`` and ``samples_out`` count the samples taken and given so far.
    """

    __slots__ = ("_finished", "_stream", "in_rate", "out_rate", "samples_in", "samples_out")

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.samples_in = 0
        self.samples_out = 0
        self._finished = False
        self._stream: soxr.ResampleStream | None = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    @property
    def finished(self) -> bool:
        """Whether :meth:`flush` has ended the stream."""
        return self._finished

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Resample the next chunk of a 1-D stream; return the output ready so far.

        In pass-through mode the result may be ``x`` itself.
        """
        if self._finished:
            raise RuntimeError("resampler already flushed; make a new one for a new stream")
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D array of samples, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.samples_in += len(x)
        y = x if self._stream is None else self._stream.resample_chunk(x)
        self.samples_out += len(y)
        return y

    def flush(self) -> NDArray[np.float32]:
        """End the stream and return the samples the filter still holds.

        Calling it again returns an empty array.
        """
        if self._finished or self._stream is None:
            self._finished = True
            return _EMPTY
        self._finished = True
        y: NDArray[np.float32] = self._stream.resample_chunk(_EMPTY, last=True)
        self.samples_out += len(y)
        return y


class ChannelResamplers:
    """One :class:`Resampler` per channel, so that channels are never mixed."""

    __slots__ = ("_resamplers",)

    def __init__(self, channels: int, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self._resamplers = [Resampler(in_rate, out_rate, quality) for _ in range(channels)]

    @property
    def channels(self) -> int:
        """How many channels, hence streams, this holds."""
        return len(self._resamplers)

    def process(self, x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Resample a (channels, n) chunk; return each channel's output, in channel order."""
        if x.ndim != 2 or x.shape[0] != len(self._resamplers):
            raise ValueError(
                f"expected an array of shape ({len(self._resamplers)}, n), got {x.shape}"
            )
        return [r.process(row) for r, row in zip(self._resamplers, x, strict=True)]

    def flush(self) -> list[NDArray[np.float32]]:
        """End every channel's stream; return what each still holds."""
        return [r.flush() for r in self._resamplers]
