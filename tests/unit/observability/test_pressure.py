"""Pressure: delays against ceilings, remembered for one to two windows; spare capacity."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from streamer.observability.pressure import CPU_BUDGET, Ceilings, Pressure, WindowMax, thread_cpu
from streamer.testing import ManualClock


def test_a_spike_is_remembered_for_one_to_two_windows() -> None:
    clock = ManualClock(0.0)
    peak = WindowMax(1.0, clock)
    peak.observe(0.3)
    clock.now = 0.5
    peak.observe(0.1)
    assert peak.value() == 0.3
    clock.now = 1.2  # the next window: the previous one's peak still counts
    assert peak.value() == 0.3
    clock.now = 2.3  # two windows on: forgotten
    assert peak.value() == 0.0


def test_behind_names_the_delay_past_its_ceiling_then_recovers() -> None:
    clock = ManualClock(0.0)
    cpu = ManualClock(0.0)
    pressure = Pressure(Ceilings(loop_lag=0.2, vad_delay=0.5, queue_wait=0), clock=clock, cpu=cpu)
    pressure.observe_loop_lag(0.05)
    pressure.observe_vad_delay(0.4)
    assert pressure.behind() is None
    pressure.observe_vad_delay(0.7)
    why = pressure.behind()
    assert why is not None and "VAD step delay 700 ms" in why and "max_vad_delay_ms" in why
    assert pressure.capacity(100) == 0
    clock.now = 2.5
    assert pressure.behind() is None
    assert pressure.capacity(100) == 100  # no cost measured yet: the room left


def test_a_loop_starved_past_the_windows_is_still_behind_while_its_tick_is_overdue() -> None:
    clock = ManualClock(0.0)
    overdue = ManualClock(0.0)
    pressure = Pressure(Ceilings(loop_lag=0.2), clock=clock, cpu=ManualClock(0.0))
    pressure.watch_loop(overdue)
    pressure.observe_loop_lag(0.9)
    clock.now = 2.5  # nothing observed for two windows: the peak is forgotten ...
    overdue.now = 2.4  # ... but the monitor's tick has been due for 2.4 s
    why = pressure.behind()
    assert why is not None and "event-loop lag 2400 ms" in why
    assert pressure.readings()["loop_lag"] == 2.4
    overdue.now = 0.0  # the tick ran
    assert pressure.behind() is None


def test_capacity_is_the_spare_cpu_at_the_cost_per_stream() -> None:
    clock = ManualClock(0.0)
    cpu = ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now = 1.0
    pressure.sample_cpu(50)  # 50 streams came in this second: too new to measure
    assert pressure.cost_per_stream is None
    clock.now, cpu.now = 2.0, 0.25  # a quarter of a core for the same 50 streams
    pressure.sample_cpu(50)
    assert pressure.cost_per_stream == 0.005
    assert pressure.capacity(1000) == int((CPU_BUDGET - 0.25) / 0.005)
    assert pressure.capacity(10) == 10
    assert pressure.capacity(-3) == 0


def test_the_cost_per_stream_leaves_out_the_upkeep_of_an_idle_process() -> None:
    clock = ManualClock(0.0)
    cpu = ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now, cpu.now = 1.0, 0.30  # start-up work lands in the first sample
    pressure.sample_cpu(0)
    clock.now, cpu.now = 2.0, 0.35  # then 0.05 of a core with no stream
    pressure.sample_cpu(0)
    assert pressure.idle_rate == pytest.approx(0.05)
    assert pressure.cost_per_stream is None
    clock.now, cpu.now = 3.0, 0.35 + 0.05 + 10 * 0.004  # ten streams came: not measured
    pressure.sample_cpu(10)
    assert pressure.cost_per_stream is None
    clock.now, cpu.now = 4.0, 0.44 + 0.05 + 10 * 0.004  # the ten at 4 ms of CPU a second
    pressure.sample_cpu(10)
    assert pressure.cost_per_stream == pytest.approx(0.004)
    # The average cost (0.009) would give 88 streams; the marginal one gives the rest.
    assert pressure.capacity(1000) == int((CPU_BUDGET - 0.09) / 0.004 + 1e-9)


def test_a_sample_at_or_below_the_upkeep_keeps_the_last_cost() -> None:
    clock = ManualClock(0.0)
    cpu = ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now, cpu.now = 1.0, 0.05
    pressure.sample_cpu(0)
    clock.now, cpu.now = 2.0, 0.15
    pressure.sample_cpu(20)  # 20 streams came
    clock.now, cpu.now = 3.0, 0.25  # 0.1 core for the 20: 0.05 above the upkeep
    pressure.sample_cpu(20)
    assert pressure.cost_per_stream == pytest.approx(0.0025)
    clock.now, cpu.now = 4.0, 0.28  # 0.03 of a core: less than the upkeep, no information
    pressure.sample_cpu(20)
    assert pressure.cost_per_stream == pytest.approx(0.0025)


def test_a_sample_where_many_came_or_went_keeps_the_last_cost() -> None:
    """Four streams steady, then a burst of twelve: the burst's connections and starts
    are not charged to the four, which would leave no room for the burst itself."""
    clock = ManualClock(0.0)
    cpu = ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now = 1.0
    pressure.sample_cpu(4)
    clock.now, cpu.now = 2.0, 0.02  # 5 ms a second each
    pressure.sample_cpu(4)
    assert pressure.cost_per_stream == pytest.approx(0.005)
    clock.now, cpu.now = 3.0, 0.02 + 0.9  # twelve came, fast: most of a core
    pressure.sample_cpu(16)
    assert pressure.cost_per_stream == pytest.approx(0.005)
    assert pressure.capacity(1000, 16) > 0
    clock.now, cpu.now = 4.0, 0.92 + 0.08  # the sixteen at the same 5 ms
    pressure.sample_cpu(16)
    assert pressure.cost_per_stream == pytest.approx(0.005)
    clock.now, cpu.now = 5.0, 1.0 + 0.08 + 0.03  # one more (a quarter of the 16 or less)
    pressure.sample_cpu(17)
    assert pressure.cost_per_stream == pytest.approx(0.11 / 16)
    clock.now, cpu.now = 6.0, 1.11 + 0.0425  # eight went: 0.0425 core for nine is not known
    pressure.sample_cpu(9)
    assert pressure.cost_per_stream == pytest.approx(0.11 / 16)


def test_streams_admitted_since_the_sample_are_taken_off_the_estimate() -> None:
    clock = ManualClock(0.0)
    cpu = ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now = 1.0
    pressure.sample_cpu(50)
    clock.now, cpu.now = 2.0, 0.25  # a quarter of a core for 50 streams
    pressure.sample_cpu(50)
    spare = int((CPU_BUDGET - 0.25) / 0.005)
    assert pressure.capacity(1000, 50) == spare
    assert pressure.capacity(1000, 50 + 30) == spare - 30
    assert pressure.capacity(1000, 50 + spare + 5) == 0
    assert pressure.capacity(1000, 40) == spare  # streams that ended free nothing yet


def test_the_turn_engine_s_cpu_is_charged_to_the_streams_that_detect_turns() -> None:
    clock, cpu, turn = ManualClock(0.0), ManualClock(0.0), ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu, turn_cpu=turn)
    clock.now, cpu.now = 1.0, 0.05  # an idle second: 0.05 of a core of upkeep
    pressure.sample_cpu(0)
    clock.now, cpu.now = 2.0, 0.1
    pressure.sample_cpu(20)  # 20 streams came (the engine not yet called)
    # 7 ms a second each, 4 of them detecting turns: the engine took 0.2 core.
    clock.now, turn.now = 3.0, 0.2
    cpu.now = 0.1 + 0.05 + 20 * 0.007 + 0.2
    pressure.sample_cpu(20, 4)
    assert pressure.turn_rate == pytest.approx(0.2)
    assert pressure.cost_per_stream == pytest.approx(0.007)  # the engine's CPU left out
    assert pressure.turn_cost_per_stream == pytest.approx(0.05)
    assert pressure.capacity(1000) == 65  # (0.85 - 0.39) / 0.007 = 65.7
    assert pressure.capacity(1000, turns=True) == 8  # / (0.007 + 0.05) = 8.07
    assert pressure.readings()["turn_cpu_cores"] == 0.2


def test_the_turn_cost_is_averaged_over_seconds_with_and_without_a_call() -> None:
    clock, cpu, turn = ManualClock(0.0), ManualClock(0.0), ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu, turn_cpu=turn)
    clock.now = 1.0
    pressure.sample_cpu(2, 2)  # turn streams, no call yet: no turn cost known
    assert pressure.turn_cost_per_stream is None
    assert pressure.capacity(1000, turns=True) == pressure.capacity(1000) == 1000
    clock.now, cpu.now, turn.now = 2.0, 0.1, 0.1  # one call of 0.1 s for two streams
    pressure.sample_cpu(2, 2)
    first = pressure.turn_cost_per_stream
    assert first is not None and first > 0
    for second in range(3, 8):  # quiet seconds: the average falls, not to zero
        clock.now = float(second)
        pressure.sample_cpu(2, 2)
        cost = pressure.turn_cost_per_stream
        assert cost is not None and 0 < cost < first
        first = cost
    clock.now = 9.0
    pressure.sample_cpu(2, 0)  # no stream detects turns: the cost is kept, not diluted
    assert pressure.turn_cost_per_stream == first


def test_without_a_turn_engine_turn_streams_cost_the_plain_cost() -> None:
    clock, cpu = ManualClock(0.0), ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now, cpu.now = 1.0, 0.25
    pressure.sample_cpu(50, 10)
    assert pressure.turn_rate == 0.0 and pressure.turn_cost_per_stream is None
    assert pressure.capacity(1000, turns=True) == pressure.capacity(1000)


def test_before_any_stream_is_measured_the_prior_cost_holds_the_estimate() -> None:
    clock, cpu = ManualClock(0.0), ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now, cpu.now = 1.0, 0.05  # idle: 0.05 of a core of upkeep
    pressure.sample_cpu(0)
    assert pressure.capacity(1000) == 1000  # no prior, nothing measured: the room left
    pressure.prior_cost = 0.004
    spare = 200  # (0.85 - 0.05) / 0.004
    assert pressure.capacity(1000) == spare
    # Streams admitted all at once, before a sample: each is counted off the estimate.
    assert pressure.capacity(1000, 150) == spare - 150
    assert pressure.capacity(1000, 250) == 0
    clock.now, cpu.now = 2.0, 0.05 + 0.05 + 100 * 0.001  # 100 came: not yet measured
    pressure.sample_cpu(100)
    assert pressure.cost_per_stream is None
    # The prior charged for the 100 streams, not the CPU their connections took.
    assert pressure.capacity(1000) == 100  # (0.85 - 0.05 - 100 * 0.004) / 0.004
    clock.now, cpu.now = 3.0, 0.2 + 0.05 + 100 * 0.002  # measured: 2 ms a second each
    pressure.sample_cpu(100)
    assert pressure.cost_per_stream == pytest.approx(0.002)
    # The measured cost replaces the prior: 0.25 of a core used now.
    assert pressure.capacity(1000) == int((CPU_BUDGET - 0.25) / pressure.cost_per_stream)


def test_the_budget_is_the_cores_the_front_end_may_use() -> None:
    clock, cpu = ManualClock(0.0), ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu, budget=0.425)
    clock.now = 1.0
    pressure.sample_cpu(50)
    clock.now, cpu.now = 2.0, 0.125  # 0.125 of a core for 50 streams
    pressure.sample_cpu(50)
    assert pressure.capacity(1000) == 120  # (0.425 - 0.125) / 0.0025


def test_thread_cpu_reads_another_thread_s_clock() -> None:
    started, release = threading.Event(), threading.Event()
    clocks: list[Callable[[], float]] = []

    def spin() -> None:
        clocks.append(thread_cpu())
        started.set()
        end = time.thread_time() + 0.05
        while time.thread_time() < end:  # 50 ms of this thread's CPU
            pass
        release.wait(5)

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        started.wait(5)
        before = time.thread_time()
        release_after = time.monotonic() + 5
        while clocks[0]() < 0.05 and time.monotonic() < release_after:
            time.sleep(0.005)
        assert clocks[0]() >= 0.05  # the spinning thread's CPU, read from this one
        assert time.thread_time() - before < 0.05  # not this thread's own
    finally:
        release.set()
        worker.join(5)


@dataclass
class Batch:
    """A batch's figures as the scheduler reports them."""

    run_seconds: float
    queue_wait: tuple[float, ...] = ()


def test_the_model_s_workers_bound_the_estimate_when_they_are_the_slower_part() -> None:
    clock, cpu = ManualClock(0.0), ManualClock(0.0)
    pressure = Pressure(Ceilings(), clock=clock, cpu=cpu, model_workers=2)
    clock.now, cpu.now = 1.0, 0.05
    pressure.sample_cpu(0)  # idle upkeep 0.05
    clock.now, cpu.now = 2.0, 0.1
    pressure.sample_cpu(4)  # four streams came
    # Each second: the front end 1 ms of CPU per stream, the model 0.3 s of a worker's.
    for second in range(3, 30):
        pressure.observe_batch(Batch(run_seconds=4 * 0.3))
        clock.now, cpu.now = float(second), cpu.now + 0.05 + 4 * 0.001
        pressure.sample_cpu(4)
    assert pressure.cost_per_stream == pytest.approx(0.001)
    assert pressure.model_cost_per_stream == pytest.approx(0.3, rel=0.02)
    # The front end could take 796 more; two workers at 0.85 carry 1.7 / 0.3 = 5 streams.
    assert pressure.capacity(1000) == 1  # 5 less the 4 live
    assert pressure.readings()["model_workers_busy"] == pytest.approx(1.2, rel=0.1)
    # Without workers of its own (the model elsewhere) only the front end counts.
    elsewhere = Pressure(Ceilings(), clock=clock, cpu=cpu)
    elsewhere.cost_per_stream = 0.001
    elsewhere.observe_batch(Batch(run_seconds=100.0))
    assert elsewhere.capacity(1000) > 500
