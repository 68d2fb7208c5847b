"""Cut a stream of samples into fixed-size frames, whatever sizes it arrives in."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


class Framer:
    """Buffers 1-D float32 samples and hands out whole frames of ``size`` samples.

    ``offset`` is the index (in samples since the stream's start) of the first sample still
    buffered, so callers can time frames from sample counts alone.
    """

    __slots__ = ("_buf", "_fill", "offset", "size")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("frame size must be positive")
        self.size = size
        self.offset = 0
        self._buf = np.zeros(size, dtype=np.float32)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples buffered that do not yet make a whole frame."""
        return self._fill

    def push(self, samples: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Add samples; return every frame completed by them, oldest first (copies)."""
        frames: list[NDArray[np.float32]] = []
        pos = 0
        n = len(samples)
        if self._fill:
            take = min(self.size - self._fill, n)
            self._buf[self._fill : self._fill + take] = samples[:take]
            self._fill += take
            pos = take
            if self._fill < self.size:
                return frames
            frames.append(self._buf.copy())
            self._fill = 0
        whole = (n - pos) // self.size
        if whole:
            block = np.array(samples[pos : pos + whole * self.size], dtype=np.float32)
            frames.extend(block.reshape(whole, self.size))
            pos += whole * self.size
        rest = n - pos
        if rest:
            self._buf[:rest] = samples[pos:]
            self._fill = rest
        self.offset += len(frames) * self.size
        return frames

    def push_block(self, samples: NDArray[np.float32]) -> NDArray[np.float32]:
        """``push``, with the completed frames as one new ``(k, size)`` array (``k`` may
        be 0): one copy for all of them, rather than one array each."""
        size, fill, n = self.size, self._fill, len(samples)
        whole = (fill + n) // size
        if not whole:
            self._buf[fill : fill + n] = samples
            self._fill = fill + n
            return np.empty((0, size), dtype=np.float32)
        block = np.empty((whole, size), dtype=np.float32)
        flat = block.reshape(-1)
        used = whole * size - fill
        flat[:fill] = self._buf[:fill]
        flat[fill:] = samples[:used]
        rest = n - used
        self._buf[:rest] = samples[used:]
        self._fill = rest
        self.offset += whole * size
        return block

    def take_tail(self) -> NDArray[np.float32]:
        """Return the buffered partial frame (possibly empty) and reset the buffer."""
        tail = self._buf[: self._fill].copy()
        self.offset += self._fill
        self._fill = 0
        return tail
