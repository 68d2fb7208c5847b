"""The load generator on small runs: against the real server, and against fake servers
that drop or repeat a result, which its check must catch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from streamer.bench.expected import ExpectedResults
from streamer.bench.runner import LoadSpec, RunResult, estimated_capacity, run_load
from streamer.cli.main import main

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
SHORT = (AUDIO / "big_dog_8k.wav", AUDIO / "cross_8k.wav", AUDIO / "front_center_48k.wav")


async def test_a_small_run_on_the_segmented_route_gets_every_result(
    server: Any,
) -> None:
    spec = LoadSpec(url=server.ws("segmented"), files=SHORT, streams=4, ramp=0.5)
    result = await run_load(spec, server_pid=server.process.pid)
    s = result.summary
    assert result.clean, s["problems"]
    assert s["streams"] == {"requested": 4, "ok": 4, "refused": 0, "failed": 0}
    assert s["results"]["received"] == s["results"]["expected"] > 0
    assert s["final_delay"]["count"] == s["results"]["received"]
    assert 0 < s["final_delay"]["p50"] < 5.0
    cpu = s["server_cpu"]
    assert cpu["cpu_seconds"] > 0
    per_stream = cpu["cpu_seconds"] * 1000 / s["audio_seconds"]
    assert cpu["ms_per_stream_audio_second"] == pytest.approx(per_stream, rel=0.01)
    # The front end's threads, from the server's own counters: parts of its CPU.
    threads = cpu["threads"]
    assert threads["vad_engine"]["cpu_seconds"] > 0 and threads["event_loop"]["cpu_seconds"] > 0
    spent = threads["vad_engine"]["cpu_seconds"] + threads["event_loop"]["cpu_seconds"]
    assert spent <= cpu["cpu_seconds"] * 1.05 + 0.05  # read a moment after the process's
    assert threads["rest"]["cpu_seconds"] >= 0
    assert all(st.rtf is not None and st.rtf >= 0.9 for st in result.streams)  # real time


def test_the_command_writes_json_a_table_and_a_chart(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    files = [arg for path in SHORT[:2] for arg in ("-f", str(path))]
    url = server.http.replace("http", "ws")
    options = ["-n", "3", "--speed", "4", "--server-pid", str(server.process.pid), "--no-floor"]
    outputs = ["--json", str(out), "--png", str(chart), "--per-stream"]
    status = main(["bench", "--url", url, "--route", "simple", *files, *options, *outputs])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "final delay" in captured.out and "lost 0, duplicated 0" in captured.out
    assert "starting 3 stream(s)" in captured.err  # progress goes to stderr
    doc = json.loads(out.read_text())
    assert doc["run"]["summary"]["results"]["clean"] is True
    assert len(doc["run"]["streams"]) == 3 and doc["machine"]["cpus"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "floor" not in doc and "against_floor" not in doc["run"]["summary"]


def test_the_report_carries_the_floor_and_the_ratios_to_it(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    url = server.http.replace("http", "ws")
    options = ["-n", "2", "--speed", "4", "--server-pid", str(server.process.pid)]
    floor_options = ["--floor-batch", "16", "--floor-streams", "4"]
    command = ["bench", "--url", url, "-f", str(SHORT[0]), *options, *floor_options]
    status = main([*command, "--json", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    doc = json.loads(out.read_text())
    floor = doc["floor"]
    assert floor["vad_batch"] == 16 and floor["ingest_streams"] == 4
    assert floor["vad_us_per_frame"] > 0 and floor["ingest_us_per_message"] > 0
    assert floor["ingest_messages_measured"] > 0
    per_second = floor["vad_us_per_frame"] * 31.25 + floor["ingest_us_per_message"] * 10
    assert floor["ms_per_stream_second"] == pytest.approx(per_second / 1000, rel=1e-3)
    summary = doc["run"]["summary"]
    against = summary["against_floor"]
    cost = summary["server_cpu"]["ms_per_stream_audio_second"]
    assert against["server_ms_per_stream_second"] == cost
    assert against["server_cost_ratio"] == pytest.approx(
        cost / floor["ms_per_stream_second"], rel=1e-2
    )
    cores = floor["cpus"] - summary["client_cpu"]["cores_mean"]
    capacity = cores * 1000 / floor["ms_per_stream_second"]
    assert against["floor_capacity_streams"] == pytest.approx(capacity, rel=1e-2)
    assert against["share_of_floor_capacity"] == pytest.approx(2 / capacity, rel=1e-2)
    assert "floor: " in captured.out and "x the floor" in captured.out
    assert "of the floor's capacity" in captured.out
    parts = against["parts"]  # the segmented route: each thread against its floor part
    assert parts["vad_engine"]["ratio"] > 0 and parts["event_loop"]["ratio"] > 0
    assert "x the floor's VAD" in captured.out and "x the floor's ingest" in captured.out


async def test_a_run_with_turn_detection_reports_the_turn_engine_s_share_of_cpu(
    server: Any,
) -> None:
    spec = LoadSpec(
        url=server.ws("segmented"),
        files=(AUDIO / "harvard_16k.wav",),
        streams=1,
        turn_detection={"eot_threshold": 0.5},
    )
    result = await run_load(spec, server_pid=server.process.pid)
    s = result.summary
    assert result.clean, s["problems"]  # the finals are all there beside the turns
    assert s["turn_detection"] == {"eot_threshold": 0.5}
    turns = [e for e in result.records[0].events if e["type"] == "turn"]
    ended_by_model = [e for e in turns if e["event"] == "end" and e["trigger"] == "model"]
    assert ended_by_model, [(e["event"], e.get("trigger")) for e in turns]
    cpu = s["server_cpu"]
    assert 0 < cpu["turn_engine_cpu_seconds"] < cpu["cpu_seconds"]
    assert cpu["turn_engine_share"] == pytest.approx(
        cpu["turn_engine_cpu_seconds"] / cpu["cpu_seconds"], abs=1e-3
    )


# -- fake servers that get it wrong --------------------------------------------------------

Spans = Callable[[int, dict[str, Any]], list[tuple[float, float]]]


def tiles(frames: int, fmt: dict[str, Any]) -> list[tuple[float, float]]:
    """What the simple route sends: 0.5 s chunks from 0 to the end, at 16 kHz."""
    total = round(frames * 16000 / fmt["sample_rate"])
    return [(s / 16000, min(s + 8000, total) / 16000) for s in range(0, total, 8000)]


class FakeStreamer:
    """Speaks the protocol and sends the results ``spans`` gives, after ``tamper``."""

    def __init__(self, spans: Spans, tamper: Callable[[list[tuple[float, float]]], None]) -> None:
        self.spans = spans
        self.tamper = tamper

    async def handle(self, ws: ServerConnection) -> None:
        fmt: dict[str, Any] = {}
        received = 0
        async for message in ws:
            if isinstance(message, bytes):
                received += len(message)
                continue
            request = json.loads(message)
            if request["request"] == "start":
                fmt = request["format"]
                received = 0
                ready = {"type": "ready", "session_id": "x", "model": "test"}
                ready |= {"model_sample_rate": 16000, "channels": 1}
                await ws.send(json.dumps(ready))
            elif request["request"] == "stop":
                frames = received // (fmt["bit_depth"] // 8 * fmt["channels"])
                spans = self.spans(frames, fmt)
                self.tamper(spans)
                for start, end in spans:
                    segment = {"type": "segment", "channel": 0, "is_final": True}
                    segment |= {"start_time": round(start, 6), "end_time": round(end, 6)}
                    segment["count"] = round((end - start) * 16000)
                    await ws.send(json.dumps(segment))
                await ws.send(json.dumps({"type": "done", "audio_seconds": 1.0}))
                if request.get("disconnect"):
                    await ws.close()
                    return


@pytest.fixture
async def fake() -> AsyncIterator[Callable[[FakeStreamer], Any]]:
    servers: list[Server] = []

    async def start(handler: FakeStreamer) -> str:
        running = await serve(handler.handle, "127.0.0.1", 0)
        servers.append(running)
        port = next(iter(running.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/api/v1"

    yield start
    for running in servers:
        running.close()
        await running.wait_closed()


async def run_against(url: str, route: str, streams: int = 2) -> RunResult:
    spec = LoadSpec(url=f"{url}/{route}", files=SHORT[:1], streams=streams, speed=0)
    return await run_load(spec)


async def test_the_check_catches_a_dropped_result_on_the_simple_route(
    fake: Callable[[FakeStreamer], Any],
) -> None:
    url = await fake(FakeStreamer(tiles, lambda spans: spans.pop(2)))
    result = await run_against(url, "simple")
    results = result.summary["results"]
    assert results["lost"] == 2 and results["duplicated"] == 0  # one per stream
    assert not result.clean
    assert all("do not match" in (s.problem or "") for s in result.streams)


async def test_the_check_catches_a_repeated_result(fake: Callable[[FakeStreamer], Any]) -> None:
    url = await fake(FakeStreamer(tiles, lambda spans: spans.insert(1, spans[1])))
    results = (await run_against(url, "simple")).summary["results"]
    assert results["duplicated"] == 2 and results["lost"] == 0


async def test_the_check_catches_a_dropped_segment_on_the_segmented_route(
    fake: Callable[[FakeStreamer], Any],
) -> None:
    expected = ExpectedResults()
    data = {}

    def segments(frames: int, fmt: dict[str, Any]) -> list[tuple[float, float]]:
        spans = expected.get("x", data["audio"], fmt, segmented=True).spans
        assert spans is not None
        return list(spans[0])

    from streamer.client import load_audio

    data["audio"] = load_audio(SHORT[0]).data
    clean = await run_against(await fake(FakeStreamer(segments, lambda spans: None)), "segmented")
    assert clean.clean and clean.summary["results"]["expected"] == 2  # one segment each
    url = await fake(FakeStreamer(segments, lambda spans: spans.pop()))
    result = await run_against(url, "segmented")
    assert result.summary["results"]["lost"] == 2 and not result.clean


async def test_with_several_front_end_processes_each_gets_its_cpu_and_streams(
    launch: Callable[..., Any],
) -> None:
    srv = launch(workers=2)
    spec = LoadSpec(url=srv.ws("segmented"), files=SHORT[:1], streams=4, min_audio_seconds=3.0)
    result = await run_load(spec, server_pid=srv.process.pid)
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{srv.http}/api/v1/health", timeout=5.0)).json()
    fronts = {row["pid"] for row in health["processes"]}
    assert len(fronts) == 2
    assert result.clean, result.summary["problems"]
    processes = {row["pid"]: row for row in result.summary["server_processes"]}
    assert {pid for pid, row in processes.items() if row["role"] == "front-end"} == fronts
    assert processes[srv.process.pid]["role"] == "server"  # the supervisor
    total = result.summary["server_cpu"]["cpu_seconds"]
    assert sum(row["cpu_seconds"] for row in processes.values()) == pytest.approx(total, abs=0.02)
    # Each process's thread counters, summed over the processes. Each process publishes
    # them every second, so a run of a few seconds reads them up to a second off at each
    # end: a fraction of a second of two idle processes' CPU.
    threads = result.summary["server_cpu"]["threads"]
    assert threads["vad_engine"]["cpu_seconds"] > 0 and threads["event_loop"]["cpu_seconds"] > 0
    spent = threads["vad_engine"]["cpu_seconds"] + threads["event_loop"]["cpu_seconds"]
    assert spent < total + 0.1
    # Every sample saw the fleet table; the streams it counted were the bench's own.
    sampled = [p for p in result.timeline if "processes" in p]
    assert sampled
    for p in sampled:
        streams = [row["streams"] for row in p["processes"] if row["streams"] is not None]
        assert sum(streams) <= 4


async def test_the_servers_own_capacity_estimate_is_read_from_its_metrics(server: Any) -> None:
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{server.http}/api/v1/health", timeout=5.0)).json()
    estimate = await asyncio.to_thread(estimated_capacity, server.ws("segmented"))
    # The gauge is the health report's capacity: never past the room under max_streams.
    assert estimate is not None and 0 <= estimate <= health["max_streams"]
    turns = await asyncio.to_thread(estimated_capacity, server.ws("segmented"), turns=True)
    assert turns is not None and 0 <= turns <= health["max_streams"]
    assert estimated_capacity("ws://127.0.0.1:9/api/v1/segmented", timeout=1.0) is None
