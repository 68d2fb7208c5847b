"""Models of one's own, named in settings as ``model_factories:NAME`` (tests/ on the path)."""

from __future__ import annotations

import datetime
import itertools
import threading
from collections.abc import Callable, Sequence

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


class OddOutputs:
    """A model whose outputs test the output rules: one kind per call, in this order."""

    name = "odd-outputs"
    sample_rate = 16000
    max_batch_size = 1
    OUTPUTS: tuple[Callable[[], object], ...] = (
        lambda: {"count": np.int64(3), "level": np.float32(0.5), "voiced": np.bool_(True)},
        lambda: {"vector": np.arange(3, dtype=np.int16), "pairs": (1, np.float64(2.5))},
        lambda: {"score": float("nan")},
        lambda: {"channel": 7},
        lambda: {"when": datetime.date(2026, 1, 1)},
        lambda: ["not", "a", "dict"],
        lambda: {"text": "plain"},
    )

    def __init__(self) -> None:
        self._calls = itertools.count()
        self._lock = threading.Lock()

    def infer(self, audio: NDArray[np.float32]) -> Output:
        with self._lock:
            index = next(self._calls) % len(self.OUTPUTS)
        return self.OUTPUTS[index]()  # type: ignore[return-value]

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        return [self.infer(audio) for audio in batch]


def odd_outputs() -> OddOutputs:
    return OddOutputs()
