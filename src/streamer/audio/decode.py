"""Turn raw client bytes into float32 samples, one row per channel, whatever the chunking.

Every format decodes with a few vectorised numpy operations per chunk. The 8-bit formats
(unsigned PCM, G.711 µ-law and A-law) go through 256-entry tables built once at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio.formats import AudioFormat, Encoding

__all__ = ["ALAW_TABLE", "MULAW_TABLE", "U8_TABLE", "Decoder"]

_Kernel = Callable[[bytes, int], NDArray[np.float32]]
"""(buffer, frames) -> (channels, frames); reads only the first ``frames`` whole frames."""


def _mulaw_to_linear() -> NDArray[np.int16]:
    # ITU-T G.711 µ-law expansion: bits are stored inverted; 3 bits of segment, 4 of step.
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    linear = np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return linear.astype(np.int16)


def _alaw_to_linear() -> NDArray[np.int16]:
    # ITU-T G.711 A-law expansion: even bits are inverted; segment 0 is linear.
    a = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (a & 0x70) >> 4
    step = (a & 0x0F) << 4
    magnitude = np.where(segment == 0, step + 8, (step + 0x108) << np.maximum(segment - 1, 0))
    linear = np.where(a & 0x80, magnitude, -magnitude)
    return linear.astype(np.int16)


MULAW_TABLE: NDArray[np.float32] = (_mulaw_to_linear() / 32768.0).astype(np.float32)
"""µ-law byte -> sample: the G.711 16-bit linear value over 32768."""
ALAW_TABLE: NDArray[np.float32] = (_alaw_to_linear() / 32768.0).astype(np.float32)
"""A-law byte -> sample: the G.711 16-bit linear value over 32768."""
U8_TABLE: NDArray[np.float32] = ((np.arange(256) - 128) / 128.0).astype(np.float32)
"""Unsigned 8-bit PCM byte -> sample: (x - 128) / 128."""
for _table in (MULAW_TABLE, ALAW_TABLE, U8_TABLE):
    _table.flags.writeable = False

_S16_SCALE = np.float32(2.0**-15)
_S24_SCALE = np.float32(2.0**-23)
_S32_SCALE = np.float32(2.0**-31)
_I16 = np.dtype("<i2")
_I32 = np.dtype("<i4")


# Kernels are specialised on the channel count: mono, the common case, skips the transpose.
# Numpy's per-call overhead dominates at 100 ms chunks, so each one makes as few calls as it
# can, and operators are preferred to ufunc calls with keywords.


def _lookup(table: NDArray[np.float32], channels: int) -> _Kernel:
    if channels == 1:

        def mono(buf: bytes, frames: int) -> NDArray[np.float32]:
            return table[np.frombuffer(buf, np.uint8, frames)][None]

        return mono

    def interleaved(buf: bytes, frames: int) -> NDArray[np.float32]:
        codes = np.frombuffer(buf, np.uint8, frames * channels).reshape(frames, channels)
        out = np.empty((channels, frames), np.float32)
        np.take(table, codes.T, out=out)
        return out

    return interleaved


def _scaled(dtype: np.dtype[np.signedinteger[Any]], scale: np.float32, channels: int) -> _Kernel:
    if channels == 1 and dtype == _I16:
        # int16 times a float32 scalar is float32 already: the plain operator will do.
        def mono_s16(buf: bytes, frames: int) -> NDArray[np.float32]:
            samples: NDArray[np.float32] = np.frombuffer(buf, _I16, frames) * scale
            return samples[None]

        return mono_s16

    def kernel(buf: bytes, frames: int) -> NDArray[np.float32]:
        ints = np.frombuffer(buf, dtype, frames * channels).reshape(frames, channels)
        return np.multiply(ints.T, scale, dtype=np.float32, order="C")

    return kernel


def _s24(channels: int) -> _Kernel:
    def kernel(buf: bytes, frames: int) -> NDArray[np.float32]:
        # Read each sample as the top three bytes of an int32 that starts one byte earlier
        # (hence the padding byte); the arithmetic shift then extends the sign.
        padded = b"\0" + buf
        words: NDArray[np.int32] = np.ndarray(
            (frames, channels), _I32, padded, 0, (3 * channels, 3)
        )
        samples: NDArray[np.int32] = words >> 8
        return np.multiply(samples.T, _S24_SCALE, dtype=np.float32, order="C")

    return kernel


def _floats(dtype: str, channels: int) -> _Kernel:
    def kernel(buf: bytes, frames: int) -> NDArray[np.float32]:
        raw = np.frombuffer(buf, dtype, frames * channels).reshape(frames, channels)
        out = np.empty((channels, frames), np.float32)
        # Clip and zero NaN so a faulty client cannot push non-finite values downstream.
        np.clip(raw.T, -1.0, 1.0, out=out, casting="same_kind")
        flat = out.reshape(-1)
        # After clipping, the sum of squares is finite unless a sample is NaN (and a BLAS
        # dot is far cheaper than an elementwise NaN test on every chunk).
        if not np.isfinite(np.dot(flat, flat)):
            flat[np.isnan(flat)] = 0.0
        return out

    return kernel


def _kernel_for(fmt: AudioFormat) -> _Kernel:
    channels = fmt.channels
    if fmt.encoding is Encoding.MULAW:
        return _lookup(MULAW_TABLE, channels)
    if fmt.encoding is Encoding.ALAW:
        return _lookup(ALAW_TABLE, channels)
    if fmt.is_float:
        return _floats("<f4" if fmt.bit_depth == 32 else "<f8", channels)
    if fmt.bit_depth == 8:
        return _lookup(U8_TABLE, channels)
    if fmt.bit_depth == 16:
        return _scaled(_I16, _S16_SCALE, channels)
    if fmt.bit_depth == 24:
        return _s24(channels)
    return _scaled(_I32, _S32_SCALE, channels)


class Decoder:
    """Decodes a stream of interleaved frames in ``fmt`` into float32 samples in [-1, 1].

    Chunks may end anywhere, even inside a sample: the incomplete frame is kept and
    completed by the next chunk, so any split of the same bytes gives the same samples.
    Float input is clipped to [-1, 1], and NaN becomes 0.
    """

    __slots__ = ("_channels", "_frame_bytes", "_frames_decoded", "_kernel", "_pending", "format")

    def __init__(self, fmt: AudioFormat) -> None:
        fmt.validate()
        self.format = fmt
        self._channels = fmt.channels
        self._frame_bytes = fmt.frame_bytes
        self._kernel = _kernel_for(fmt)
        self._pending = b""
        self._frames_decoded = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held until the next chunk completes it."""
        return len(self._pending)

    @property
    def frames_decoded(self) -> int:
        """Frames (samples per channel) returned so far."""
        return self._frames_decoded

    def feed(self, data: bytes) -> NDArray[np.float32]:
        """Decode every whole frame available; return an array of shape (channels, frames).

        The result is a new C-contiguous array; it never shares memory with ``data``.
        """
        if self._pending:
            data = self._pending + data
        size = len(data)
        frames = size // self._frame_bytes
        used = frames * self._frame_bytes
        self._pending = data[used:] if used < size else b""
        if not frames:
            return np.empty((self._channels, 0), np.float32)
        self._frames_decoded += frames
        return self._kernel(data, frames)
