"""Whether this process is keeping up, measured, and how many more streams it could take.

Counting streams and queued inferences does not tell a server that it is falling behind:
another process taking a core, or streams costlier than usual, slow every stream at the
same count. ``Pressure`` watches three delays against ceilings (``[server]`` settings):

- event-loop lag (the loop monitor's late timers): time everything on the loop waits;
- VAD step delay: from a stream's frames being handed to the VAD engine to their
  probabilities coming back;
- inference queue wait: from an inference being queued to a worker taking it.

Each is kept as the largest value seen in the current and the previous window (one second
each), so a spike is remembered for one to two seconds and then forgotten: admission
refuses while any is past its ceiling and admits again once the server has caught up.
The loop lag also counts the tick now overdue (``watch_loop``): a loop so starved that it
observed nothing for two windows is not taken to have caught up.

``capacity`` estimates the streams this process could still take at its current CPU cost
per stream, zero while behind, never more than the room left under
``server.max_streams``. The CPU counted is the front end's: the event loop's, the VAD
engine's and the turn engine's threads (``front_end_cpu`` in the app), not the model's
workers, which the inference queue wait guards. Its budget is ``CPU_BUDGET`` of one core
(one process runs Python on one core), or of its share of the cores when there are more
front-end processes than cores.
The cost per stream is the marginal one: the CPU above the process's upkeep with no
stream (the least rate seen while idle), over the live streams. The average (all the CPU
over the streams) would charge that upkeep to each stream, and at a few streams make the
estimate a fraction of the real capacity. Before any stream has been measured, the cost
is ``prior_cost``: the app sets it at start from the VAD model's cost per frame measured
then, times ``PRIOR_VAD_MULTIPLE``, so that streams arriving all at once on a fresh
server are held to what it can carry too.

The model's workers in this process (``model_workers``, a thread or process pool of its
own) are a second budget: each can be busy ``CPU_BUDGET`` of every second. Their busy time
(the batches' run time) per live stream, averaged over about ten samples as the turn
engine's is (finals land at pauses, not every second), gives the streams the workers
could still serve; the estimate is the smaller of the two. A slow model (Whisper on the
CPU) reaches its limit long before the front end does.

The end-of-turn model (``turn/engine.py``) runs only for streams that detect turns, and
costs them far more than a plain stream's front end. Its CPU (the engine's own count,
``turn_cpu``) is taken out of the process's before the per-stream cost, and charged to
the streams that detect turns alone, as the engine's CPU per turn-stream-second averaged
over about ten seconds (a call lands in one sample, at a pause, not in every second):
``capacity(turns=True)`` is what a stream that detects turns could still have.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "CPU_BUDGET",
    "PRIOR_VAD_MULTIPLE",
    "THREAD_CLOCKS",
    "Ceilings",
    "Pressure",
    "WindowMax",
    "thread_cpu",
    "usable_cpus",
]

WINDOW: Final = 1.0
_UNKNOWN: Final = 1 << 62  # no limit known: larger than any room
THREAD_CLOCKS: Final = hasattr(time, "pthread_getcpuclockid")
"""Whether this platform reads one thread's CPU (Linux, the BSDs); elsewhere the front
end's CPU is the whole process's."""
TURN_SMOOTHING: Final = 0.1
"""Weight of the newest sample in the turn engine's averaged cost (about ten samples)."""
CPU_BUDGET: Final = 0.85
"""The share of one core a front-end process is planned to use at most."""
PRIOR_VAD_MULTIPLE: Final = 2.4
"""A stream's front-end CPU near capacity, as a multiple of its VAD model's CPU (31.25
batched frames a second): the loop's share (receiving, decoding, segmenting, sending) and
the engine's own overhead come on top of the model. ``streamer bench`` measured 2.1-2.2
at the knee on a 2-core x86 machine; the prior errs on the side of admitting
fewer, since streams that arrive all at once also cost their connections (at 2.4, twice
the capacity arriving at once on a fresh server left the admitted ones within the
latency objective: docs/benchmarks.md)."""


@dataclass(frozen=True, slots=True)
class Ceilings:
    """Seconds past which each delay means the server is behind; 0 turns one off."""

    loop_lag: float = 0.25
    vad_delay: float = 0.5
    queue_wait: float = 2.0


class WindowMax:
    """The largest value of the current and the previous window."""

    __slots__ = ("_clock", "_current", "_previous", "_started", "_window")

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._started = clock()
        self._current = 0.0
        self._previous = 0.0

    def _roll(self, now: float) -> None:
        elapsed = now - self._started
        if elapsed >= self._window:
            # One window gone: the current becomes the previous; two or more: both gone.
            self._previous = self._current if elapsed < 2 * self._window else 0.0
            self._current = 0.0
            self._started = now

    def observe(self, value: float) -> None:
        self._roll(self._clock())
        if value > self._current:
            self._current = value

    def value(self) -> float:
        self._roll(self._clock())
        return max(self._current, self._previous)


class _Averaged:
    """A rate and the streams it served, each averaged over about ten samples
    (``TURN_SMOOTHING``), from nothing at first: for work that lands at pauses, not in
    every second (the turn engine's calls, the model's batches)."""

    __slots__ = ("cost", "rate", "streams")

    def __init__(self) -> None:
        self.rate = 0.0
        self.streams = 0.0
        self.cost: float | None = None
        """The averaged rate per averaged stream; None before a sample had any rate."""

    def observe(self, rate: float, streams: int) -> None:
        self.rate += TURN_SMOOTHING * (rate - self.rate)
        self.streams += TURN_SMOOTHING * (streams - self.streams)
        if self.rate > 0:
            self.cost = self.rate / self.streams


class Pressure:
    """This process's delays against their ceilings, and its spare capacity."""

    def __init__(
        self,
        ceilings: Ceilings,
        *,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] | None = None,
        turn_cpu: Callable[[], float] | None = None,
        budget: float = CPU_BUDGET,
        model_workers: int = 0,
    ) -> None:
        """``cpu``: the front end's CPU seconds so far (default: the whole process's);
        ``turn_cpu``: the turn engine's share of them (``TurnEngine.cpu_seconds``; none: no
        engine); ``budget``: the cores the front end may use; ``model_workers``: the model
        workers of this process's own pool (0: the model is elsewhere, not estimated)."""
        self.ceilings = ceilings
        self.budget = budget
        self.model_workers = model_workers
        self.prior_cost: float | None = None
        """Cores per stream taken before a cost has been measured (None: the room left)."""
        self._clock = clock
        self._cpu = cpu or _process_cpu
        self._turn_cpu = turn_cpu or _never
        self.loop_lag = WindowMax(window, clock)
        self.vad_delay = WindowMax(window, clock)
        self.queue_wait = WindowMax(window, clock)
        self._sampled = (clock(), self._cpu(), self._turn_cpu())
        self.cpu_rate = 0.0
        """Cores this process used over the last sample (``sample_cpu``), the turn
        engine's included."""
        self.turn_rate = 0.0
        """Cores the turn engine used over the last sample (part of ``cpu_rate``)."""
        self.cost_per_stream: float | None = None
        """Cores per live stream above the upkeep, the turn engine's left out, at the last
        sample that had streams (and more CPU than the upkeep); None before one."""
        self.idle_rate: float | None = None
        """The least cores used over a sample with no live stream: the process's upkeep."""
        self._sampled_streams = 0  # live streams at the last sample
        # The turn engine's cores over the streams that detect turns, and the model's
        # workers busy over the live streams, each averaged over the samples that had any.
        self._turn = _Averaged()
        self._model = _Averaged()
        self._busy = 0.0  # the model's batches' run time so far
        self._busy_sampled = 0.0
        self._overdue: Callable[[], float] = _never

    @property
    def turn_cost_per_stream(self) -> float | None:
        """The turn engine's cores per live stream that detects turns, averaged over about
        ten samples (``TURN_SMOOTHING``); None before the engine has run for one."""
        return self._turn.cost

    @property
    def model_cost_per_stream(self) -> float | None:
        """Worker-seconds of the model per second per live stream, averaged over about ten
        samples (``TURN_SMOOTHING``); None before a batch has run with streams live."""
        return self._model.cost

    @property
    def model_rate(self) -> float:
        """Workers busy, averaged over the samples with streams (from nothing at first)."""
        return self._model.rate

    # -- feeds ----------------------------------------------------------------------------

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    def watch_loop(self, overdue: Callable[[], float]) -> None:
        """Also count the loop monitor's lag in progress (``LoopMonitor.overdue``): a loop
        starved for longer than two windows has observed nothing in them, yet is behind."""
        self._overdue = overdue

    def _loop_lag(self) -> float:
        return max(self.loop_lag.value(), self._overdue())

    def observe_vad_delay(self, seconds: float) -> None:
        self.vad_delay.observe(seconds)

    def observe_batch(self, stats: _Waits) -> None:
        if stats.queue_wait:
            self.queue_wait.observe(max(stats.queue_wait))
        self._busy += stats.run_seconds

    def sample_cpu(self, live_streams: int, turn_streams: int = 0) -> None:
        """Take a CPU sample (the app does every second): the cost per stream, and the
        turn engine's per stream of the ``turn_streams`` (of the live ones) that use it."""
        now, cpu, turn = self._clock(), self._cpu(), self._turn_cpu()
        then, before, turn_before = self._sampled
        if now - then <= 0:
            return
        self.cpu_rate = max(0.0, (cpu - before) / (now - then))
        self.turn_rate = min(self.cpu_rate, max(0.0, (turn - turn_before) / (now - then)))
        self._sampled = (now, cpu, turn)
        # Streams live through the whole sample: at its start and still at its end. Those
        # that came during it cost more than a second of their audio (the connection, the
        # start) or less (not all of a second): a burst would read as costly, a ramp as
        # cheap. A sample that began with none (a burst on an idle process) measures none,
        # nor does one where more came or went than a quarter of those live through it:
        # their part seconds would be charged to the few (a burst onto a process with one
        # stream would read as that one stream costing a core).
        through = min(self._sampled_streams, live_streams)
        changed = max(self._sampled_streams, live_streams) - through
        self._sampled_streams = max(0, live_streams)
        front = self.cpu_rate - self.turn_rate  # every stream's share
        if live_streams <= 0:
            idle = self.idle_rate
            self.idle_rate = front if idle is None else min(idle, front)
        elif (
            through > 0
            and changed * 4 <= through
            and (marginal := front - (self.idle_rate or 0.0)) > 0
        ):
            self.cost_per_stream = marginal / through
        busy, self._busy_sampled = self._busy - self._busy_sampled, self._busy
        if live_streams > 0 and self.model_workers:
            rate = busy / (now - then)
            self._model.observe(rate, live_streams)
        if turn_streams > 0:
            self._turn.observe(self.turn_rate, turn_streams)

    # -- readings -------------------------------------------------------------------------

    def behind(self) -> str | None:
        """Why the server is not keeping up now (a delay past its ceiling), or None."""
        for name, reading, ceiling, setting in (
            ("event-loop lag", self._loop_lag, self.ceilings.loop_lag, "max_loop_lag_ms"),
            (
                "VAD step delay",
                self.vad_delay.value,
                self.ceilings.vad_delay,
                "max_vad_delay_ms",
            ),
            (
                "inference queue wait",
                self.queue_wait.value,
                self.ceilings.queue_wait,
                "max_queue_wait_ms",
            ),
        ):
            value = reading()
            if ceiling and value > ceiling:
                return (
                    f"the server is not keeping up: {name} {value * 1000:.0f} ms is past its "
                    f"ceiling of {ceiling * 1000:.0f} ms (server.{setting})"
                )
        return None

    def capacity(self, room: int, live_streams: int | None = None, *, turns: bool = False) -> int:
        """Streams this process could still take: 0 while behind; at most ``room``.

        With ``live_streams`` (now), streams admitted since the last CPU sample are taken
        off: their CPU is not in that sample yet, and a burst admitted within one second
        would otherwise each be offered the same spare CPU. ``turns``: streams that detect
        turns, each also costing the turn engine's share.
        """
        room = max(0, room)
        if self.behind() is not None:
            return 0
        plain = self.cost_per_stream if self.cost_per_stream is not None else self.prior_cost
        cost = plain
        if turns and self.turn_cost_per_stream:
            cost = (cost or 0.0) + self.turn_cost_per_stream
        if not cost:
            return min(room, self._model_capacity(live_streams))
        # The CPU the streams of the last sample take at their cost, not the CPU measured
        # then: a burst of new connections is work that passes.
        load = (self.idle_rate or 0.0) + (plain or 0.0) * self._sampled_streams + self.turn_rate
        estimate = self._within(self.budget - load, cost, live_streams)
        return min(room, estimate, self._model_capacity(live_streams))

    def _model_capacity(self, live_streams: int | None) -> int:
        """Streams the model's workers could still serve (a large number when unknown)."""
        cost = self.model_cost_per_stream
        if not self.model_workers or not cost:
            return _UNKNOWN
        # Workers' time the streams of the last sample take at that cost (the average rate
        # itself starts from nothing and would offer too much at first).
        return self._within(
            self.model_workers * CPU_BUDGET - cost * self._sampled_streams, cost, live_streams
        )

    def _within(self, spare: float, cost: float, live_streams: int | None) -> int:
        """Streams at ``cost`` each that ``spare`` still holds, less those admitted since
        the last sample (``live_streams`` now): their cost is not in it yet."""
        estimate = math.floor(max(0.0, spare) / cost + 1e-9)  # not one less for a rounding
        if live_streams is not None:
            estimate -= max(0, live_streams - self._sampled_streams)
        return max(0, estimate)

    def readings(self) -> dict[str, float]:
        """The delays now (seconds) and the CPU figures (cores), for the health report."""
        return {
            "loop_lag": round(self._loop_lag(), 4),
            "vad_delay": round(self.vad_delay.value(), 4),
            "queue_wait": round(self.queue_wait.value(), 4),
            "cpu_cores": round(self.cpu_rate, 3),
            "turn_cpu_cores": round(self.turn_rate, 3),
            "cost_per_stream_cores": round(self.cost_per_stream or 0.0, 6),
            "prior_cost_cores": round(self.prior_cost or 0.0, 6),
            "model_workers_busy": round(self.model_rate, 3),
        }


class _Waits(Protocol):
    """What ``observe_batch`` reads of the scheduler's figures for one batch."""

    @property
    def queue_wait(self) -> tuple[float, ...]: ...

    @property
    def run_seconds(self) -> float: ...


def _never() -> float:
    return 0.0


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), which its front-end processes
    (and anything else on the machine) share."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_cpu() -> Callable[[], float]:
    """The CPU seconds of the calling thread so far, readable from any thread; the whole
    process's where the platform has no per-thread clocks."""
    if not THREAD_CLOCKS:
        return _process_cpu
    clock = time.pthread_getcpuclockid(threading.get_ident())
    return lambda: time.clock_gettime(clock)


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system
