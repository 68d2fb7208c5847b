"""The turn engine's CPU and the capacity left for streams that detect turns, as metrics;
and the front end's other threads' CPU (the VAD engine's and the event loop's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamer.observability.gauges import RuntimeCollector, RuntimeSources, SharedRuntime


class Spent:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def test_a_scrape_reads_the_turn_engine_s_cpu_and_the_turn_capacity() -> None:
    spent = Spent()
    sources = RuntimeSources(capacity=lambda: 40, turn_capacity=lambda: 6, turn_cpu_seconds=spent)
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(lambda: sources))
    spent.seconds = 1.25
    assert registry.get_sample_value("streamer_turn_engine_cpu_seconds_total") == 1.25
    assert registry.get_sample_value("streamer_estimated_turn_stream_capacity") == 6
    assert registry.get_sample_value("streamer_estimated_stream_capacity") == 40


def test_the_shared_gauges_advance_by_the_engine_s_new_cpu_only() -> None:
    spent = Spent()
    sources = RuntimeSources(turn_capacity=lambda: 3, turn_cpu_seconds=spent)
    registry = CollectorRegistry()
    shared = SharedRuntime(registry)
    spent.seconds = 0.5
    shared.publish(sources)
    spent.seconds = 0.75
    shared.publish(sources)
    shared.publish(sources)
    assert registry.get_sample_value("streamer_turn_engine_cpu_seconds_total") == 0.75
    assert registry.get_sample_value("streamer_estimated_turn_stream_capacity") == 3


def test_a_scrape_reads_each_thread_s_cpu() -> None:
    vad, loop = Spent(), Spent()
    sources = RuntimeSources(vad_cpu_seconds=vad, loop_cpu_seconds=loop)
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(lambda: sources))
    vad.seconds, loop.seconds = 2.5, 1.25
    assert registry.get_sample_value("streamer_vad_engine_cpu_seconds_total") == 2.5
    assert registry.get_sample_value("streamer_event_loop_cpu_seconds_total") == 1.25


def test_the_shared_counters_advance_by_each_thread_s_new_cpu_only() -> None:
    vad, loop = Spent(), Spent()
    sources = RuntimeSources(vad_cpu_seconds=vad, loop_cpu_seconds=loop)
    registry = CollectorRegistry()
    shared = SharedRuntime(registry)
    vad.seconds, loop.seconds = 1.0, 0.5
    shared.publish(sources)
    vad.seconds, loop.seconds = 1.5, 0.75
    shared.publish(sources)
    shared.publish(sources)
    assert registry.get_sample_value("streamer_vad_engine_cpu_seconds_total") == 1.5
    assert registry.get_sample_value("streamer_event_loop_cpu_seconds_total") == 0.75
