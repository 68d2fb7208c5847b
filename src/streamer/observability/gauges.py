"""The gauges of the server's live state (connections, streams, the queue, workers,
capacity, tasks), read from ``RuntimeSources`` the composition root supplies.

In one process they are computed when Prometheus scrapes (``RuntimeCollector``). Across
several front-end processes (``serve --workers``, prometheus-client's multiprocess mode) a
scrape in one process cannot call another's sources, so each process publishes its own into
shared gauges and counters (``SharedRuntime``), and ``/metrics`` serves the sum of every
process (``collect_all``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "ROUTES",
    "RuntimeCollector",
    "RuntimeSources",
    "SharedRuntime",
    "collect_all",
    "multiprocess_dir",
]

ROUTES: Final = ("simple", "segmented")
"""Routes whose series exist from the start (others appear when first used)."""

SpeculationOutcome = Literal["used", "discarded", "deferred"]
"""What became of a final decoded ahead at a pause (``StreamObserver.speculated``)."""
SPECULATION_OUTCOMES: Final[tuple[SpeculationOutcome, ...]] = ("used", "discarded", "deferred")


def _nothing() -> Mapping[str, int]:
    return {}


def _zero() -> int:
    return 0


@dataclass
class RuntimeSources:
    """Where the scrape-time gauges read the server's live state from."""

    connections: Callable[[], Mapping[str, int]] = _nothing
    """Open connections by route."""
    streams: Callable[[], Mapping[str, int]] = _nothing
    """Live streams by route."""
    queue_depth: Callable[[], int] = _zero
    busy_workers: Callable[[], int] = _zero
    workers: Callable[[], int] = _zero
    workers_available: Callable[[], int] = _zero
    workers_stuck: Callable[[], int] = _zero
    workers_written_off: Callable[[], int] = _zero
    interims_dropped: Callable[[], int] = _zero
    interims_skipped: Callable[[], int] = _zero
    capacity: Callable[[], int] = _zero
    """Streams the process can still take at its current cost per stream."""
    turn_capacity: Callable[[], int] = _zero
    """The same for streams that detect turns (the turn engine's cost added to each)."""
    turn_cpu_seconds: Callable[[], float] = _zero
    """CPU seconds the turn engine has spent (features and model), all calls together."""
    vad_cpu_seconds: Callable[[], float] = _zero
    """CPU seconds the VAD engine's thread has spent (the model's calls included)."""
    loop_cpu_seconds: Callable[[], float] = _zero
    """CPU seconds the event loop's thread has spent since the server started serving."""
    tasks: Callable[[], Mapping[str, int]] = _nothing
    """Live asyncio tasks by subsystem."""
    extra: dict[str, Callable[[], float]] = field(default_factory=dict)


TURN_CAPACITY_DOC: Final = (
    "Streams that detect turns this server can still take, each charged the turn engine's "
    "CPU per such stream besides the plain cost (0 while it is not keeping up)."
)
TURN_CPU_DOC: Final = (
    "CPU seconds the end-of-turn engine has spent (features and model), all calls together."
)
VAD_CPU_DOC: Final = (
    "CPU seconds the VAD engine's thread has spent: the batched Silero calls and the engine's "
    "own bookkeeping (0 where the platform has no per-thread CPU clock)."
)
LOOP_CPU_DOC: Final = (
    "CPU seconds the event loop's thread has spent since the server started serving (its "
    "start-up left out): receiving, decoding, segmenting and sending (0 where the platform "
    "has no per-thread CPU clock)."
)


class RuntimeCollector(Collector):
    """Gauges computed when Prometheus scrapes, from the ``RuntimeSources`` that
    ``sources`` returns then (one process)."""

    def __init__(self, sources: Callable[[], RuntimeSources]) -> None:
        self._sources = sources

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering does not call the sources.
        return list(self._families(RuntimeSources()))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._sources()))

    @staticmethod
    def _by(
        family: GaugeMetricFamily, values: Mapping[str, int], defaults: Iterable[str] = ()
    ) -> GaugeMetricFamily:
        merged = dict.fromkeys(defaults, 0)
        merged.update({str(k): v for k, v in values.items()})
        for key, value in sorted(merged.items()):
            family.add_metric([key], value)
        return family

    def _families(self, sources: RuntimeSources) -> Iterator[Metric]:
        yield self._by(
            GaugeMetricFamily(
                "streamer_connections_active", "Open connections, by route.", labels=["route"]
            ),
            sources.connections(),
            ROUTES,
        )
        yield self._by(
            GaugeMetricFamily(
                "streamer_streams_active", "Live streams, by route.", labels=["route"]
            ),
            sources.streams(),
            ROUTES,
        )
        yield GaugeMetricFamily(
            "streamer_queue_depth",
            "Inference jobs waiting for a worker.",
            value=sources.queue_depth(),
        )
        yield GaugeMetricFamily(
            "streamer_workers_busy", "Workers running a batch now.", value=sources.busy_workers()
        )
        yield GaugeMetricFamily(
            "streamer_workers", "Workers in the inference pool.", value=sources.workers()
        )
        yield GaugeMetricFamily(
            "streamer_workers_available",
            "Workers that can run a batch (the pool less those stuck and not replaced).",
            value=sources.workers_available(),
        )
        yield GaugeMetricFamily(
            "streamer_workers_stuck",
            "Worker threads written off past a deadline and still inside the model.",
            value=sources.workers_stuck(),
        )
        yield CounterMetricFamily(
            "streamer_workers_written_off",
            "Worker threads written off for running past inference.deadline_seconds.",
            value=sources.workers_written_off(),
        )
        yield CounterMetricFamily(
            "streamer_interims_dropped",
            "Interim inferences refused because the queue was full.",
            value=sources.interims_dropped(),
        )
        yield CounterMetricFamily(
            "streamer_interims_skipped",
            "Queued interim inferences skipped after waiting too long (the model is behind).",
            value=sources.interims_skipped(),
        )
        yield GaugeMetricFamily(
            "streamer_estimated_stream_capacity",
            "Streams this server can still take at its current cost per stream (0 while it "
            "is not keeping up).",
            value=sources.capacity(),
        )
        yield GaugeMetricFamily(
            "streamer_estimated_turn_stream_capacity",
            TURN_CAPACITY_DOC,
            value=sources.turn_capacity(),
        )
        yield CounterMetricFamily(
            "streamer_turn_engine_cpu_seconds", TURN_CPU_DOC, value=sources.turn_cpu_seconds()
        )
        yield CounterMetricFamily(
            "streamer_vad_engine_cpu_seconds", VAD_CPU_DOC, value=sources.vad_cpu_seconds()
        )
        yield CounterMetricFamily(
            "streamer_event_loop_cpu_seconds", LOOP_CPU_DOC, value=sources.loop_cpu_seconds()
        )
        yield self._by(
            GaugeMetricFamily(
                "streamer_tasks",
                "Live asyncio tasks, by subsystem (the task name's prefix).",
                labels=["subsystem"],
            ),
            sources.tasks(),
        )


class SharedRuntime:
    """The scrape-time gauges for several front-end processes (prometheus-client's
    multiprocess mode), where a scrape in one process cannot call another's sources:
    each process copies its sources into shared gauges (summed over live processes) and
    counters (summed over all, dead ones too) when ``publish`` is called, which the app
    does every second and before each scrape. Another process's figures are at most that
    old. Process CPU is published too: the standard process collector does not work in
    this mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode="livesum")

        self.connections = gauge(
            "streamer_connections_active", "Open connections, by route.", ("route",)
        )
        self.streams = gauge("streamer_streams_active", "Live streams, by route.", ("route",))
        self.queue_depth = gauge("streamer_queue_depth", "Inference jobs waiting for a worker.")
        self.busy = gauge("streamer_workers_busy", "Workers running a batch now.")
        self.workers = gauge("streamer_workers", "Workers in the inference pool.")
        self.available = gauge(
            "streamer_workers_available",
            "Workers that can run a batch (the pool less those stuck and not replaced).",
        )
        self.stuck = gauge(
            "streamer_workers_stuck",
            "Worker threads written off past a deadline and still inside the model.",
        )
        self.capacity = gauge(
            "streamer_estimated_stream_capacity",
            "Streams this server can still take at its current cost per stream (0 while it "
            "is not keeping up).",
        )
        self.turn_capacity = gauge("streamer_estimated_turn_stream_capacity", TURN_CAPACITY_DOC)
        self.tasks = gauge(
            "streamer_tasks",
            "Live asyncio tasks, by subsystem (the task name's prefix).",
            ("subsystem",),
        )
        self.written_off = Counter(
            "streamer_workers_written_off",
            "Worker threads written off for running past inference.deadline_seconds.",
            registry=registry,
        )
        self.interims_dropped = Counter(
            "streamer_interims_dropped",
            "Interim inferences refused because the queue was full.",
            registry=registry,
        )
        self.interims_skipped = Counter(
            "streamer_interims_skipped",
            "Queued interim inferences skipped after waiting too long (the model is behind).",
            registry=registry,
        )
        self.cpu = Counter(
            "process_cpu_seconds",
            "User and system CPU seconds of the front-end processes.",
            registry=registry,
        )
        self.turn_cpu = Counter("streamer_turn_engine_cpu_seconds", TURN_CPU_DOC, registry=registry)
        self.vad_cpu = Counter("streamer_vad_engine_cpu_seconds", VAD_CPU_DOC, registry=registry)
        self.loop_cpu = Counter("streamer_event_loop_cpu_seconds", LOOP_CPU_DOC, registry=registry)
        self._last = {
            "turn_cpu": 0.0,
            "vad_cpu": 0.0,
            "loop_cpu": 0.0,
            "written_off": 0.0,
            "interims_dropped": 0.0,
            "interims_skipped": 0.0,
            "cpu": 0.0,
        }
        self._tasks_seen: set[str] = set()

    def _advance(self, counter: Counter, key: str, value: float) -> None:
        if value > self._last[key]:
            counter.inc(value - self._last[key])
            self._last[key] = value

    def publish(self, sources: RuntimeSources) -> None:
        for gauge, values in (
            (self.connections, sources.connections()),
            (self.streams, sources.streams()),
        ):
            merged = dict.fromkeys(ROUTES, 0)
            merged.update({str(k): v for k, v in values.items()})
            for key, value in merged.items():
                gauge.labels(key).set(value)
        self.queue_depth.set(sources.queue_depth())
        self.busy.set(sources.busy_workers())
        self.workers.set(sources.workers())
        self.available.set(sources.workers_available())
        self.stuck.set(sources.workers_stuck())
        self.capacity.set(sources.capacity())
        self.turn_capacity.set(sources.turn_capacity())
        tasks = {str(k): v for k, v in sources.tasks().items()}
        for gone in self._tasks_seen - tasks.keys():
            self.tasks.labels(gone).set(0)
        for key, value in tasks.items():
            self.tasks.labels(key).set(value)
        self._tasks_seen = set(tasks)
        self._advance(self.written_off, "written_off", sources.workers_written_off())
        self._advance(self.interims_dropped, "interims_dropped", sources.interims_dropped())
        self._advance(self.interims_skipped, "interims_skipped", sources.interims_skipped())
        self._advance(self.turn_cpu, "turn_cpu", sources.turn_cpu_seconds())
        self._advance(self.vad_cpu, "vad_cpu", sources.vad_cpu_seconds())
        self._advance(self.loop_cpu, "loop_cpu", sources.loop_cpu_seconds())
        times = os.times()
        self._advance(self.cpu, "cpu", times.user + times.system)


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def collect_all() -> bytes:
    """The exposition of every front-end process (multiprocess mode only)."""
    from prometheus_client import generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
