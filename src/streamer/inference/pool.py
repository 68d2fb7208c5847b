"""Worker pools: where blocking model code runs, off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from streamer.inference.model import Model, Output, WordTimedModel, wants_word_times


class WorkerPool(Protocol):
    """Runs batches of inputs through a model on workers."""

    workers: int
    """How many batches can run at once."""
    preemptible: bool
    """Whether cancelling ``run`` stops the model (a process can be killed, a thread not)."""

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        """One output or exception per input, in order; ``words``: which inputs want word
        times (for a model that gives them)."""
        ...

    async def close(self) -> None: ...


def call_model(
    model: Model, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
) -> list[Output | Exception]:
    """Run one batch, turning exceptions into per-item results."""
    try:
        if wants_word_times(model, words):
            assert isinstance(model, WordTimedModel) and words is not None
            return model.infer_batch(batch, words)
        if len(batch) == 1 and model.max_batch_size == 1:
            return [model.infer(batch[0])]
        return model.infer_batch(batch)
    except Exception as exc:  # the model's fault: report it for every item of the call
        return [exc] * len(batch)


class ThreadPool:
    """A fixed set of named threads; right for models that release the GIL."""

    preemptible = False

    def __init__(self, model: Model, workers: int) -> None:
        self.model = model
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="streamer-infer"
        )

    async def run(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call_model, self.model, batch, words)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
