"""The floor's arithmetic, and its VAD measurement on the bundled model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamer.bench.floor import (
    FRAMES_PER_SECOND,
    Floor,
    against_floor,
    describe_against,
    measure_vad,
    speech_frames,
)
from streamer.segmentation.silero_model import FRAME_SAMPLES


def floor(**changes: Any) -> Floor:
    values: dict[str, Any] = {
        "vad_us_per_frame": 60.0,
        "vad_batch": 256,
        "ingest_us_per_message": 40.0,
        "message_seconds": 0.1,
        "cpus": 2,
    }
    values.update(changes)
    return Floor(**values)


def summary(ok: int = 300, cost: float | None = 2.9, client: float | None = 0.15) -> dict[str, Any]:
    s: dict[str, Any] = {"streams": {"requested": ok, "ok": ok, "refused": 0, "failed": 0}}
    if cost is not None:
        s["server_cpu"] = {"ms_per_stream_audio_second": cost}
    if client is not None:
        s["client_cpu"] = {"cores_mean": client}
    return s


def test_a_silero_frame_is_32_ms() -> None:
    assert FRAMES_PER_SECOND == 31.25


def test_the_floor_is_the_vad_per_frame_times_frames_plus_ingest_times_messages() -> None:
    f = floor()
    assert f.vad_ms_per_stream_second == pytest.approx(60 * 31.25 / 1000)  # 1.875
    assert f.ingest_ms_per_stream_second == pytest.approx(40 * 10 / 1000)  # 0.4
    assert f.ms_per_stream_second == pytest.approx(2.275)


def test_longer_messages_cost_less_ingest_per_second() -> None:
    assert floor(message_seconds=0.02).ingest_ms_per_stream_second == pytest.approx(2.0)
    assert floor(message_seconds=0.5).ingest_ms_per_stream_second == pytest.approx(0.08)


def test_capacity_is_cores_over_the_floor() -> None:
    f = floor()
    assert f.capacity(2.0) == pytest.approx(2000 / 2.275)  # 879 streams
    assert f.capacity(1.0) == pytest.approx(f.capacity(2.0) / 2)
    assert f.capacity(-0.5) == 0.0


def test_a_run_against_the_floor() -> None:
    figures = against_floor(floor(), summary(ok=300, cost=2.9, client=0.15))
    assert figures["server_cost_ratio"] == pytest.approx(2.9 / 2.275, abs=1e-3)
    assert figures["cores_left_beside_client"] == pytest.approx(1.85)
    capacity = 1.85 * 1000 / 2.275  # 813 streams
    assert figures["floor_capacity_streams"] == pytest.approx(capacity, abs=0.05)
    assert figures["share_of_floor_capacity"] == pytest.approx(300 / capacity, abs=1e-4)
    line = describe_against(figures)
    assert "1.27 x the floor" in line and "37% of the floor's capacity" in line


def test_a_small_share_keeps_its_significant_digits() -> None:
    figures = against_floor(floor(), summary(ok=2, client=0.0))
    capacity = 2 * 1000 / 2.275  # 879 streams
    assert figures["share_of_floor_capacity"] == pytest.approx(2 / capacity, rel=1e-3)


def test_only_the_streams_carried_count_toward_the_share() -> None:
    s = summary(ok=100)
    s["streams"]["refused"] = 50
    assert against_floor(floor(), s)["streams"] == 100


def test_without_server_cpu_there_is_a_share_but_no_ratio() -> None:
    figures = against_floor(floor(), summary(cost=None, client=None))
    assert figures["server_cost_ratio"] is None
    assert figures["cores_left_beside_client"] == 2
    assert "server cpu n/a" in describe_against(figures)


def test_a_client_using_every_core_leaves_no_capacity() -> None:
    figures = against_floor(floor(), summary(client=2.5))
    assert figures["floor_capacity_streams"] == 0
    assert figures["share_of_floor_capacity"] is None


def test_the_document_carries_the_parts() -> None:
    doc = floor().document()
    assert doc["ms_per_stream_second"] == pytest.approx(2.275)
    assert doc["vad_ms_per_stream_second"] + doc["ingest_ms_per_stream_second"] == pytest.approx(
        doc["ms_per_stream_second"]
    )
    assert doc["vad_frames_per_second"] == 31.25 and doc["ingest_messages_per_second"] == 10


def test_speech_frames_are_whole_frames() -> None:
    samples = np.arange(3 * FRAME_SAMPLES + 100, dtype=np.float32)
    frames = speech_frames(samples)
    assert frames.shape == (3, FRAME_SAMPLES)
    assert frames[1, 0] == FRAME_SAMPLES
    assert speech_frames(np.zeros(10, dtype=np.float32)).shape == (1, FRAME_SAMPLES)


def test_the_vad_measurement_runs_the_bundled_model() -> None:
    rng = np.random.default_rng(0)
    frames = rng.uniform(-0.3, 0.3, (20, FRAME_SAMPLES)).astype(np.float32)
    median, least, most = measure_vad(frames, 4, repeats=3, seconds_per_repeat=0.01)
    assert 0 < least <= median <= most


def test_the_vad_measurement_needs_a_row() -> None:
    with pytest.raises(ValueError, match="batch"):
        measure_vad(np.zeros((2, FRAME_SAMPLES), dtype=np.float32), 0)


def test_each_front_end_thread_is_set_against_the_floor_s_part_it_does() -> None:
    s = summary(ok=300, cost=2.9)
    s["server_cpu"]["threads"] = {
        "vad_engine": {"ms_per_stream_audio_second": 2.25},
        "event_loop": {"ms_per_stream_audio_second": 0.5},
        "rest": {"ms_per_stream_audio_second": 0.15},
    }
    parts = against_floor(floor(), s)["parts"]
    assert parts["vad_engine"]["ratio"] == pytest.approx(2.25 / 1.875, abs=1e-3)  # 1.2
    assert parts["vad_engine"]["over_floor_ms"] == pytest.approx(0.375)
    assert parts["event_loop"]["ratio"] == pytest.approx(0.5 / 0.4, abs=1e-3)  # 1.25
    assert parts["rest"]["ratio"] is None  # no floor part does its work
    assert parts["rest"]["over_floor_ms"] == pytest.approx(0.15)
    line = describe_against(against_floor(floor(), s))
    assert "VAD engine 2.25 ms = 1.20 x the floor's VAD" in line
    assert "event loop 0.5 ms = 1.25 x the floor's ingest" in line
    assert "the rest (model workers, other threads) 0.15 ms" in line


def test_without_thread_figures_there_are_no_parts() -> None:
    figures = against_floor(floor(), summary())
    assert "parts" not in figures
    assert "per stream-second:" not in describe_against(figures)
