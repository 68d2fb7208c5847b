"""The metrics registry: names, label sets, and what each method counts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamer.errors import ErrorCode
from streamer.inference.scheduler import BatchStats
from streamer.observability.metrics import OUTCOMES, ROUTES, STAGES, Metrics, new_registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def families(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_every_metric_is_prefixed_and_registries_are_independent() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first)
    Metrics(second)  # no global state: a second registry takes the same names
    names = families(first)
    assert names and all(name.startswith("streamer_") for name in names)
    assert families(second) == names


def test_known_label_values_exist_before_anything_happens() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for route in ROUTES:
        assert sample(registry, "streamer_streams_started_total", route=route) == 0
        for outcome in OUTCOMES:
            ended = sample(registry, "streamer_streams_ended_total", route=route, outcome=outcome)
            assert ended == 0
        assert sample(registry, "streamer_final_latency_seconds_count", route=route) == 0
        assert sample(registry, "streamer_streams_active", route=route) == 0
        assert sample(registry, "streamer_interim_results_dropped_total", route=route) == 0
        assert sample(registry, "streamer_unread_results_closes_total", route=route) == 0
    for stage in STAGES:
        assert sample(registry, "streamer_stage_real_time_factor_count", stage=stage) == 0
    for code in ErrorCode:
        assert sample(registry, "streamer_error_events_total", code=code.value) == 0


def test_a_stage_observation_records_media_processing_and_their_ratio() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_stage("decode", 2.0, 0.01)
    metrics.observe_stage("decode", 1.0, 0.02)
    metrics.observe_stage("decode", 0.0, 0.001)  # no audio: no ratio
    assert sample(registry, "streamer_stage_media_duration_seconds_sum", stage="decode") == 3.0
    assert sample(
        registry, "streamer_stage_processing_duration_seconds_sum", stage="decode"
    ) == pytest.approx(0.031)
    assert sample(registry, "streamer_stage_real_time_factor_count", stage="decode") == 2
    assert sample(registry, "streamer_stage_real_time_factor_sum", stage="decode") == pytest.approx(
        0.005 + 0.02
    )
    # RTF 0.005 falls in the 0.005 bucket, 0.02 does not.
    low = sample(registry, "streamer_stage_real_time_factor_bucket", stage="decode", le="0.005")
    assert low == 1


def test_batches_count_model_time_waits_failures_and_crashes() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_batch(BatchStats(3, (0.001, 0.002, 0.2), 0.05, 1.5, failures=1, crashes=0))
    metrics.observe_batch(BatchStats(1, (0.0,), 0.01, 1.0, failures=0, crashes=1))
    assert sample(registry, "streamer_model_failures_total") == 1
    assert sample(registry, "streamer_model_crashes_total") == 1
    assert sample(registry, "streamer_queue_wait_seconds_count") == 4
    assert sample(registry, "streamer_batch_size_sum") == 4
    assert sample(registry, "streamer_stage_media_duration_seconds_sum", stage="model") == 2.5
    assert sample(registry, "streamer_stage_processing_duration_seconds_count", stage="model") == 2


def test_a_timed_out_batch_counts_its_inputs_but_not_as_model_time() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_batch(BatchStats(2, (0.0, 0.1), 0.5, 2.0, failures=0, crashes=0, timeouts=2))
    assert sample(registry, "streamer_inference_timeouts_total") == 2
    assert sample(registry, "streamer_queue_wait_seconds_count") == 2
    assert sample(registry, "streamer_batch_size_sum") == 2
    count = "streamer_stage_processing_duration_seconds_count"
    assert registry.get_sample_value(count, {"stage": "model"}) in (None, 0)


def test_vad_batches_are_frames_of_32_ms() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_vad_batch(10, 0.001)
    assert sample(registry, "streamer_vad_batch_size_sum") == 10
    assert sample(
        registry, "streamer_stage_media_duration_seconds_sum", stage="vad"
    ) == pytest.approx(0.32)


def test_traffic_and_events_are_counted_by_route_type_and_code() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for size in (3200, 3200, 17):
        metrics.received("simple", size)
    metrics.event_sent("simple", "segment")
    metrics.event_sent("simple", "error", "model_error")
    metrics.event_sent("segmented", "error", "model_error")
    metrics.stream_started("simple")
    metrics.stream_ended("simple", "disconnected")
    assert sample(registry, "streamer_received_bytes_total", route="simple") == 6417
    assert sample(registry, "streamer_received_frames_total", route="simple") == 3
    assert sample(registry, "streamer_events_sent_total", route="simple", type="error") == 1
    assert sample(registry, "streamer_error_events_total", code="model_error") == 2
    assert sample(registry, "streamer_streams_started_total", route="simple") == 1
    assert (
        sample(registry, "streamer_streams_ended_total", route="simple", outcome="disconnected")
        == 1
    )


def test_latency_loop_and_first_result() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_latency("segmented", 0.4, final=True)
    metrics.observe_latency("segmented", 0.1, final=False)
    metrics.observe_first_result("segmented", 1.2)
    metrics.observe_loop_lag(0.001, False)
    metrics.observe_loop_lag(0.3, True)
    assert sample(registry, "streamer_final_latency_seconds_sum", route="segmented") == 0.4
    assert sample(registry, "streamer_interim_latency_seconds_count", route="segmented") == 1
    assert sample(registry, "streamer_time_to_first_result_seconds_count", route="segmented") == 1
    assert sample(registry, "streamer_event_loop_lag_seconds_count") == 2
    assert sample(registry, "streamer_event_loop_slow_callbacks_total") == 1


def test_scrape_time_gauges_read_their_sources() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    calls = 0

    def depth() -> int:
        nonlocal calls
        calls += 1
        return 7

    metrics.sources.queue_depth = depth
    metrics.sources.streams = lambda: {"simple": 2, "grpc": 1}
    metrics.sources.tasks = lambda: {"stream": 4, "other": 2}
    metrics.sources.busy_workers = lambda: 3
    metrics.sources.workers = lambda: 4
    metrics.sources.interims_dropped = lambda: 5
    assert calls == 0  # registering did not read the sources
    assert sample(registry, "streamer_queue_depth") == 7
    assert sample(registry, "streamer_streams_active", route="simple") == 2
    assert sample(registry, "streamer_streams_active", route="segmented") == 0
    assert sample(registry, "streamer_streams_active", route="grpc") == 1
    assert sample(registry, "streamer_tasks", subsystem="stream") == 4
    assert sample(registry, "streamer_workers_busy") == 3
    assert sample(registry, "streamer_workers") == 4
    assert sample(registry, "streamer_interims_dropped_total") == 5


def test_the_default_registry_adds_process_metrics() -> None:
    names = families(new_registry())
    assert "process_cpu_seconds" in names or "python_info" in names
    assert families(new_registry(process=False)) == {}


def test_turn_events_by_event_resumed_early_ends_and_the_turn_models_calls() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for event in ("StartOfTurn", "EagerEndOfTurn", "TurnResumed", "EagerEndOfTurn", "EndOfTurn"):
        metrics.turn_event("segmented", event)
    assert (
        sample(registry, "streamer_turn_events_total", route="segmented", event="StartOfTurn") == 1
    )
    eager = sample(
        registry, "streamer_turn_events_total", route="segmented", event="EagerEndOfTurn"
    )
    assert eager == 2
    assert sample(registry, "streamer_turn_eager_resumed_total", route="segmented") == 1
    metrics.observe_turn_call(3, 0.12)
    metrics.observe_turn_call(1, 0.04)
    assert sample(registry, "streamer_turn_batch_size_sum") == 4
    assert sample(registry, "streamer_turn_model_seconds_count") == 2
    assert sample(registry, "streamer_turn_model_seconds_sum") == pytest.approx(0.16)


def test_a_vad_row_is_one_silero_frame() -> None:
    from streamer.observability.metrics import VAD_FRAME_SECONDS
    from streamer.segmentation.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE

    assert FRAME_SAMPLES / VAD_SAMPLE_RATE == VAD_FRAME_SECONDS
