"""Models of one's own, named in settings as ``model_factories:NAME`` (tests/ on the path)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from streamer.inference.model import Output


class Loudness:
    """A model that is not the test model: the RMS level of each input, in dBFS."""

    name = "loudness"
    sample_rate = 8000
    max_batch_size = 8

    def infer(self, audio: NDArray[np.float32]) -> Output:
        rms = float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0
        return {"dbfs": round(20 * np.log10(max(rms, 1e-10)), 2), "samples": len(audio)}

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        return [self.infer(audio) for audio in batch]


def loudness() -> Loudness:
    return Loudness()


def not_a_model() -> object:
    return object()
