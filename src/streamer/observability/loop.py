"""The event loop's health: how late timers fire, and which subsystems hold live tasks.

The asyncio counterpart of tokio's task metrics. A named task sleeps for ``interval`` and
measures how much later than asked it woke: that lateness is time the loop spent running
other callbacks (or blocked in one), which is exactly what delays every stream's audio.
A tick later than ``slow_threshold`` counts as a slow callback. This is an approximation:
one long callback and several short ones back to back look the same, and a stall shorter
than the interval can fall between two ticks unnoticed. asyncio's own
``slow_callback_duration`` reports each slow callback exactly, but only in debug mode, whose
cost is far too high for production.

Tasks are counted by subsystem, the prefix of the task's name before its first ``-``
(``stream-emitter`` counts under ``stream``); unnamed tasks (``Task-17``) count as
``other``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["LoopMonitor", "subsystem"]

INTERVAL: Final = 0.1
SLOW_THRESHOLD: Final = 0.05

Observe = Callable[[float, bool], None]


def subsystem(task_name: str) -> str:
    """The subsystem a task belongs to, from its name."""
    if task_name.startswith("Task-"):
        return "other"
    head, _, _ = task_name.partition("-")
    return head or "other"


class LoopMonitor:
    """Measures the running loop's lag; counts its tasks when asked."""

    def __init__(
        self,
        observe: Observe,
        *,
        interval: float = INTERVAL,
        slow_threshold: float = SLOW_THRESHOLD,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._observe = observe
        self.interval = interval
        self.slow_threshold = slow_threshold
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._began: float | None = None

    def start(self) -> None:
        """Start the monitor's task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="observability-loop-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        interval = self.interval
        while True:
            self._began = began = time.perf_counter()
            await asyncio.sleep(interval)
            self._began = None
            lag = max(0.0, time.perf_counter() - began - interval)
            self._observe(lag, lag > self.slow_threshold)

    def overdue(self) -> float:
        """How late the tick now due is, so far (0 when none is late).

        A loop that runs one long stretch of callbacks after another observes its lag only
        between them; called from one of those callbacks, this is the lag in progress.
        """
        began = self._began
        if began is None:
            return 0.0
        return max(0.0, time.perf_counter() - began - self.interval)

    def task_counts(self) -> Mapping[str, int]:
        """Live tasks of the monitored loop, by subsystem (empty before ``start``).

        ``asyncio.all_tasks`` is meant for the loop's own thread; the ``/metrics`` route
        calls this there.
        """
        if self._loop is None or self._loop.is_closed():
            return {}
        return Counter(subsystem(task.get_name()) for task in asyncio.all_tasks(self._loop))
