"""The loop monitor: lag from a blocked loop, and tasks by subsystem."""

from __future__ import annotations

import asyncio
import time

import pytest

from streamer.observability.loop import LoopMonitor, subsystem


class Lags:
    """A recording observer."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bool]] = []

    def __call__(self, lag: float, slow: bool) -> None:
        self.seen.append((lag, slow))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("stream-emitter", "stream"),
        ("scheduler-batch", "scheduler"),
        ("observability-loop-monitor", "observability"),
        ("ws", "ws"),
        ("Task-12", "other"),
        ("-odd", "other"),
    ],
)
def test_subsystem_is_the_name_prefix(name: str, expected: str) -> None:
    assert subsystem(name) == expected


BLOCK = 1.2
"""Seconds a test blocks the loop: far past the lag a busy test machine adds by itself."""
SLOW = 1.0
"""The slow-callback threshold of these tests: what the machine's own load never reaches."""


async def seen(lags: Lags, count: int) -> None:
    """Until the monitor has made ``count`` observations (a generous bound for a busy
    machine)."""
    async with asyncio.timeout(30):
        while len(lags.seen) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_an_idle_loop_has_little_lag() -> None:
    lags = Lags()
    monitor = LoopMonitor(lags, interval=0.01, slow_threshold=SLOW)
    monitor.start()
    await seen(lags, 3)
    await monitor.close()
    assert not any(slow for _, slow in lags.seen)


async def test_a_blocking_callback_shows_as_lag_and_a_slow_callback() -> None:
    lags = Lags()
    monitor = LoopMonitor(lags, interval=0.01, slow_threshold=SLOW)
    monitor.start()
    await seen(lags, 1)
    before = len(lags.seen)
    time.sleep(BLOCK)  # noqa: ASYNC251 (blocks the loop, as model code on it would)
    await seen(lags, before + 1)
    await monitor.close()
    worst, slow = max(lags.seen)
    assert worst >= BLOCK - 0.05 and slow
    assert sum(slow for _, slow in lags.seen) == 1


async def test_tasks_are_counted_by_subsystem() -> None:
    monitor = LoopMonitor(Lags(), interval=1.0)
    assert monitor.task_counts() == {}
    monitor.start()
    gate = asyncio.Event()
    tasks = [asyncio.create_task(gate.wait(), name=f"stream-emitter-{i}") for i in range(3)]
    await asyncio.sleep(0)
    counts = monitor.task_counts()
    assert counts["stream"] == 3 and counts["observability"] == 1
    gate.set()
    await asyncio.gather(*tasks)
    await monitor.close()
    assert "stream" not in monitor.task_counts()


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        LoopMonitor(Lags(), interval=0)


async def test_a_tick_still_due_is_overdue_by_the_time_it_has_waited() -> None:
    lags = Lags()
    monitor = LoopMonitor(lags, interval=0.01, slow_threshold=SLOW)
    monitor.start()
    await seen(lags, 1)
    before = len(lags.seen)
    time.sleep(BLOCK)  # noqa: ASYNC251 (a long callback: the monitor cannot run meanwhile)
    overdue = monitor.overdue()
    assert len(lags.seen) == before  # not observed yet: only overdue tells
    assert overdue >= BLOCK - 0.05
    await seen(lags, before + 1)  # observed now: the next tick is what is due
    assert monitor.overdue() < overdue
    await monitor.close()
