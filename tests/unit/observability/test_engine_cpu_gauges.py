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


def test_a_scrape_reads_each_engine_s_cpu_and_the_turn_capacity() -> None:
    turn, vad, loop = Spent(), Spent(), Spent()
    sources = RuntimeSources(
        capacity=lambda: 40,
        turn_capacity=lambda: 6,
        turn_cpu_seconds=turn,
        vad_cpu_seconds=vad,
        loop_cpu_seconds=loop,
    )
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(lambda: sources))
    turn.seconds, vad.seconds, loop.seconds = 1.25, 2.5, 0.75
    assert registry.get_sample_value("streamer_turn_engine_cpu_seconds_total") == 1.25
    assert registry.get_sample_value("streamer_vad_engine_cpu_seconds_total") == 2.5
    assert registry.get_sample_value("streamer_event_loop_cpu_seconds_total") == 0.75
    assert registry.get_sample_value("streamer_estimated_turn_stream_capacity") == 6
    assert registry.get_sample_value("streamer_estimated_stream_capacity") == 40


def test_the_shared_counters_advance_by_each_engine_s_new_cpu_only() -> None:
    turn, vad, loop = Spent(), Spent(), Spent()
    sources = RuntimeSources(
        turn_capacity=lambda: 3, turn_cpu_seconds=turn, vad_cpu_seconds=vad, loop_cpu_seconds=loop
    )
    registry = CollectorRegistry()
    shared = SharedRuntime(registry)
    turn.seconds, vad.seconds, loop.seconds = 0.5, 1.0, 0.25
    shared.publish(sources)
    turn.seconds, vad.seconds, loop.seconds = 0.75, 1.5, 0.5
    shared.publish(sources)
    shared.publish(sources)
    assert registry.get_sample_value("streamer_turn_engine_cpu_seconds_total") == 0.75
    assert registry.get_sample_value("streamer_vad_engine_cpu_seconds_total") == 1.5
    assert registry.get_sample_value("streamer_event_loop_cpu_seconds_total") == 0.5
    assert registry.get_sample_value("streamer_estimated_turn_stream_capacity") == 3
