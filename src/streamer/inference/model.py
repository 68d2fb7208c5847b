"""The model interface, and the test model that only has hyper-parameters.

A model is anything blocking that turns mono float32 audio at ``sample_rate`` into a dict
of JSON-able output fields. The service runs it in a worker pool, never on the event loop.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

Output = dict[str, Any]


class ModelFailure(Exception):
    """A model's expected failure on one input (bad audio, no result); the stream goes on."""


class UnsupportedModel(RuntimeError):
    """The configured model cannot be loaded here (a missing extra or file, a bad factory)."""


class ModelPanic(RuntimeError):
    """The test model's stand-in for a crash inside the model."""


@runtime_checkable
class Model(Protocol):
    """What the service needs of a model."""

    name: str
    sample_rate: int
    max_batch_size: int  # 1: no batch form; the scheduler sends one input at a time

    def infer(self, audio: NDArray[np.float32]) -> Output:
        """Run on one input; raise ``ModelFailure`` for an expected failure."""
        ...

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        """Run on several inputs at once; one output (or exception) per input, in order."""
        ...


@runtime_checkable
class WordTimedModel(Model, Protocol):
    """A model that can also give the time and confidence of each word, when asked.

    A model without ``word_times`` is never asked: its ``infer_batch`` keeps its one
    argument. Asked, an output carries ``"words": [{"word", "start", "end", "confidence"}]``,
    times in seconds from the start of that input.
    """

    word_times: bool

    def infer_batch(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        """As ``Model.infer_batch``; ``words[i]``: whether input ``i`` wants word times."""
        ...


@dataclass(slots=True)
class ModelElsewhere:
    """A model's metadata, for a front-end whose model runs elsewhere: it cannot infer;
    its pool sends the inputs where the model runs (``runs``)."""

    runs: ClassVar[str] = "elsewhere"
    name: str
    sample_rate: int
    max_batch_size: int
    device: str = "unknown"
    """Where the model that answered runs (``cpu``, ``cuda:0``)."""

    def infer(self, audio: NDArray[np.float32]) -> Output:
        raise RuntimeError(f"this model runs {self.runs}; the pool sends it inputs")

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        raise RuntimeError(f"this model runs {self.runs}; the pool sends it inputs")


def make_model(factory: Callable[[], object], name: str) -> Model:
    """The model ``factory`` makes, or ``UnsupportedModel`` when what it makes is not one
    (``name`` says where the factory came from)."""
    model = factory()
    if not isinstance(model, Model):
        raise UnsupportedModel(
            f"{name} made a {type(model).__name__}, which is not a model: "
            "it needs name, sample_rate, max_batch_size, infer and infer_batch"
        )
    return model


def wants_word_times(model: Model, words: Sequence[bool] | None) -> bool:
    """Whether a batch asks for word times of a model that gives them."""
    return (
        words is not None
        and any(words)
        and isinstance(model, WordTimedModel)
        and bool(getattr(model, "word_times", False))
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def shift_words(output: Output, offset: float) -> Output:
    """An output with its words' times moved by ``offset`` seconds (into stream time)."""
    words = output.get("words")
    if not isinstance(words, list) or not offset:
        return output
    shifted = [
        {**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)}
        if isinstance(w, dict) and _is_number(w.get("start")) and _is_number(w.get("end"))
        else w
        for w in words
    ]
    return {**output, "words": shifted}


class TestModelParams(BaseModel):
    """Hyper-parameters of the test model (seconds, and rates in [0, 1])."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(default=16000, ge=8000, le=192000)
    delay: float = Field(default=0.0, ge=0, description="Seconds of work per call.")
    constant_factor: float = Field(
        default=0.0, ge=0, description="Seconds of work per second of audio."
    )
    jitter: float = Field(default=0.0, ge=0, description="Uniform extra seconds, up to this.")
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    panic_rate: float = Field(default=0.0, ge=0, le=1)
    warmup_penalty: float = Field(default=0.0, ge=0, description="Extra seconds, first call.")
    batch_size: int = Field(default=1, ge=1, description="Largest batch per call.")
    batch_item_cost: float = Field(default=0.0, ge=0, description="Seconds per batch item.")
    panic_on_samples: int | None = Field(
        default=None, ge=1, description="Panic on every input of exactly this many samples."
    )
    panic_kills_process: bool = Field(
        default=False,
        description=(
            "A panic kills the worker process, as a native crash would (in a process pool's "
            "worker only; in the server's own process it raises)."
        ),
    )
    hang_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of calls that hang, as a model stuck in native code would.",
    )
    hang_seconds: float | None = Field(
        default=None, gt=0, description="How long a hung call lasts; unset: it never returns."
    )
    seed: int | None = None


class TestModel:
    """Counts the samples it is given, after pretending to work.

    Output: ``{"count": samples}``. The cost of one call is ``delay + batch_item_cost * items
    + constant_factor * audio_seconds + U(0, jitter)`` (plus ``warmup_penalty`` on the first
    call), so it can stand in for a real model's latency, batching gains and faults; a share
    ``hang_rate`` of calls hangs (for ``hang_seconds``, or for ever).
    """

    __test__ = False  # not a pytest class

    name = "test"
    device = "cpu"

    def __init__(self, params: TestModelParams | None = None) -> None:
        self.params = params or TestModelParams()
        self.sample_rate = self.params.sample_rate
        self.max_batch_size = self.params.batch_size
        self._rng = random.Random(self.params.seed)
        self._lock = threading.Lock()
        self._warm = False

    @classmethod
    def speedy(cls, **overrides: Any) -> TestModel:
        """No delay and no faults: measures everything but the model."""
        return cls(TestModelParams(**overrides))

    @classmethod
    def batching(cls, **overrides: Any) -> TestModel:
        """Costs like an accelerator: 50 ms a call plus 2 ms an item, up to 64 items."""
        values: dict[str, Any] = {"delay": 0.05, "batch_item_cost": 0.002, "batch_size": 64}
        values.update(overrides)
        return cls(TestModelParams(**values))

    @classmethod
    def flaky(cls, **overrides: Any) -> TestModel:
        """Fast, but fails and crashes often."""
        values: dict[str, Any] = {"failure_rate": 0.2, "panic_rate": 0.1, "jitter": 0.005}
        values.update(overrides)
        return cls(TestModelParams(**values))

    def _cost(self, items: int, samples: int) -> float:
        p = self.params
        with self._lock:
            extra = self._rng.uniform(0, p.jitter) if p.jitter else 0.0
            if not self._warm:
                self._warm = True
                extra += p.warmup_penalty
        return (
            p.delay + p.batch_item_cost * items + p.constant_factor * samples / self.sample_rate
        ) + extra

    def _fate(self, audio: NDArray[np.float32]) -> Exception | None:
        p = self.params
        if p.panic_on_samples == len(audio):
            return self._panic()
        with self._lock:
            roll = self._rng.random()
        if roll < p.panic_rate:
            return self._panic()
        if roll < p.panic_rate + p.failure_rate:
            return ModelFailure("test model failed on this input")
        return None

    def _panic(self) -> ModelPanic:
        if self.params.panic_kills_process and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return ModelPanic("test model panicked")

    def infer(self, audio: NDArray[np.float32]) -> Output:
        out = self.infer_batch([audio])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def _hang(self) -> None:
        p = self.params
        if not p.hang_rate:
            return
        with self._lock:
            roll = self._rng.random()
        if roll >= p.hang_rate:
            return
        if p.hang_seconds is None:
            threading.Event().wait()  # never returns
        else:
            time.sleep(p.hang_seconds)

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        self._hang()
        cost = self._cost(len(batch), sum(len(a) for a in batch))
        if cost > 0:
            time.sleep(cost)
        results: list[Output | Exception] = []
        for audio in batch:
            fate = self._fate(audio)
            results.append(fate if fate is not None else {"count": len(audio)})
        return results
