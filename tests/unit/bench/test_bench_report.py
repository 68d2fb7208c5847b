"""The text report: the floor, the ratios to it, each process, the server's estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.bench.analysis import distribution
from streamer.bench.floor import Floor, against_floor
from streamer.bench.report import search_document, search_table, table
from streamer.bench.runner import (
    LoadSpec,
    Objective,
    RunResult,
    SearchResult,
    thread_cpu,
    turn_engine_cpu,
)

FLOOR = Floor(
    vad_us_per_frame=60.0,
    vad_batch=256,
    ingest_us_per_message=40.0,
    message_seconds=0.1,
    cpus=2,
)


def summary(streams: int, p95: float, cost: float) -> dict[str, Any]:
    s: dict[str, Any] = {
        "route": "segmented",
        "streams": {"requested": streams, "ok": streams, "refused": 0, "failed": 0},
        "results": {
            "expected": 10,
            "received": 10,
            "lost": 0,
            "duplicated": 0,
            "unexpected": 0,
            "out_of_order": 0,
            "wrong_count": 0,
            "clean": True,
        },
        "errors": {},
        "final_delay": distribution([0.3, p95]),
        "ttfr": distribution([]),
        "interim_interval": distribution([]),
        "rtf": distribution([1.0]),
        "refusal": distribution([]),
        "wall_seconds": 50.0,
        "audio_seconds": 3300.0,
        "throughput_x_real_time": 66.0,
        "finals_per_second": 2.0,
        "problems": [],
        "server_cpu": {
            "cores_mean": 1.2,
            "cores_max_1s": 1.8,
            "ms_per_stream_audio_second": cost,
        },
        "client_cpu": {"cores_mean": 0.15, "loop_lag": distribution([0.001])},
        "server_processes": [
            {
                "pid": 10,
                "role": "server",
                "cpu_seconds": 0.1,
                "cores_mean": 0.002,
                "cores_max_1s": 0.01,
                "streams_max": None,
                "plateau_cores_mean": 0.0,
                "plateau_streams_mean": None,
            },
            {
                "pid": 11,
                "role": "front-end",
                "cpu_seconds": 40.0,
                "cores_mean": 0.8,
                "cores_max_1s": 0.95,
                "streams_max": 160,
                "plateau_cores_mean": 0.9,
                "plateau_streams_mean": 155.0,
            },
        ],
        "server_estimate": {
            "readings": 8,
            "plateau_readings": 3,
            "plateau_live_mean": 300.0,
            "plateau_spare_mean": 150.0,
            "plateau_capacity": 450.0,
        },
    }
    s["against_floor"] = against_floor(FLOOR, s)
    return s


def result(streams: int, p95: float, cost: float = 2.9) -> RunResult:
    spec = LoadSpec(url="ws://h/api/v1/segmented", files=(Path("jfk.wav"),), streams=streams)
    return RunResult(spec, summary(streams, p95, cost), [])


def test_a_run_shows_the_floor_the_ratio_each_process_and_the_estimate() -> None:
    text = table(result(300, 0.4), FLOOR)
    assert "floor: 2.27 ms CPU per stream-second" in text
    assert "= 1.27 x the floor" in text and "37% of the floor's capacity" in text
    assert "pid 11 (front-end): 0.80 cores mean" in text
    assert "at the plateau 0.90 cores, 155 streams" in text
    assert "300 live + 150 it could still take = 450 streams" in text


def test_a_search_shows_each_trials_ratio_share_and_estimate() -> None:
    found = SearchResult(
        Objective(0.55), None, [(300, result(300, 0.4), True), (450, result(450, 0.9), False)]
    )
    text = search_table(found, FLOOR)
    row = next(line for line in text.splitlines() if line.strip().startswith("300"))
    assert row.split()[-4:] == ["1.27", "37%", "450", "meets"]
    assert (
        search_document(found, FLOOR)["best_share_of_floor_capacity"]
        == (found.trials[0][1].summary["against_floor"]["share_of_floor_capacity"])
    )


def test_a_run_with_turn_detection_shows_the_turn_engine_s_share() -> None:
    run = result(50, 0.4)
    s = run.summary
    s["turn_detection"] = {}
    s["server_cpu"]["cpu_seconds"] = 60.0
    s["server_cpu"].update(turn_engine_cpu(6.6, s))
    assert s["server_cpu"]["turn_engine_share"] == 0.11
    assert s["server_cpu"]["turn_engine_ms_per_stream_audio_second"] == 2.0  # 6.6 s / 3300 s
    text = table(run, FLOOR)
    assert text.startswith("route segmented with turn detection: 50 streams")
    assert "turn engine cpu: 6.6 s = 11.0% of the server's, 2.0 ms per stream-second" in text
    plain = table(result(50, 0.4), FLOOR)
    assert "turn" not in plain


def test_a_run_shows_the_server_s_cpu_by_thread_with_the_rest() -> None:
    run = result(50, 0.4)
    s = run.summary
    s["server_cpu"]["cpu_seconds"] = 10.0
    s["server_cpu"]["threads"] = thread_cpu({"vad_engine": 6.6, "event_loop": 3.0}, s)
    threads = s["server_cpu"]["threads"]
    assert threads["vad_engine"]["share"] == 0.66
    assert threads["event_loop"]["ms_per_stream_audio_second"] == 0.909  # 3 s / 3300 s
    assert threads["rest"]["cpu_seconds"] == 0.4
    assert (
        "server cpu by thread: vad engine 2.0 ms per stream-second (66%); "
        "event loop 0.909 ms per stream-second (30%); rest 0.121 ms per stream-second (4%)"
    ) in table(run, FLOOR)
