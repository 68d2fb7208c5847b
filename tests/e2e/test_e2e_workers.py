"""``streamer serve --workers 2`` on real sockets: two front-end processes on the same ports,
one server as far as clients, admission, metrics and signals are concerned.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.client import StreamResult, load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
LOGS = {"STREAMER_LOG_LEVEL": "info", "STREAMER_LOG_JSON": "true"}


def workers_of(srv: Any) -> dict[str, int]:
    """Stream id -> the front-end process that logged its start."""
    found: dict[str, int] = {}
    for line in srv.output().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("message") == "stream started" and "worker" in entry:
            found[entry["stream_id"]] = int(entry["worker"])
    return found


def health(srv: Any) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{srv.http}/api/v1/health", timeout=2.0)
    return response.status_code, response.json()


def scrape(srv: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{srv.http}/metrics", timeout=2.0).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def both_up(srv: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes = health(srv)[1]["processes"]
        if all(p["pid"] for p in processes):
            return list(processes)
        time.sleep(0.1)
    pytest.fail(f"not every front-end process came up:\n{srv.output()[-3000:]}")


async def test_streams_land_on_both_processes_and_metrics_add_up(
    launch: Callable[..., Any],
) -> None:
    srv = launch(workers=2, env=LOGS)
    both_up(srv)
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    results = await asyncio.gather(*(stream_file(srv.ws("segmented"), audio) for _ in range(16)))
    assert all(r.ok for r in results)
    placed = workers_of(srv)
    ids = [r.ready["session_id"] for r in results if r.ready]
    assert set(ids) <= placed.keys()
    assert set(placed[i] for i in ids) == {0, 1}, "the kernel spread connections over both"

    segments = sum(len(r.segments) for r in results)
    assert segments > 0
    await asyncio.sleep(1.5)  # the live gauges are published every second
    for _ in range(4):  # each scrape may be served by either process: the same totals
        m = scrape(srv)
        route = (("route", "segmented"),)
        assert m[("streamer_streams_started_total", route)] == 16
        assert m[("streamer_events_sent_total", (*route, ("type", "segment")))] == segments
        assert m[("streamer_events_sent_total", (*route, ("type", "done")))] == 16
        ended = (("outcome", "completed"), ("route", "segmented"))
        assert m[("streamer_streams_ended_total", ended)] == 16
        assert m[("streamer_streams_active", route)] == 0
        assert m[("streamer_final_latency_seconds_count", route)] == segments
        assert m[("streamer_workers", ())] == 4  # two processes of two model workers
        # Idle: each process's spare CPU at its cost per stream, summed; far under the
        # room left under max_streams (5000), which it was before the CPU decided.
        assert 0 < m[("streamer_estimated_stream_capacity", ())] < 2500


async def test_max_streams_holds_across_processes(launch: Callable[..., Any]) -> None:
    srv = launch(workers=2, env={**LOGS, "STREAMER_SERVER__MAX_STREAMS": "4"})
    both_up(srv)
    audio = load_audio(AUDIO / "jfk.wav")
    outcomes: list[asyncio.Future[StreamResult]] = []
    admitted: list[str] = []
    # One after another, so that no two admissions race: the limit holds exactly.
    for _ in range(10):
        seen = asyncio.get_running_loop().create_future()

        def first(event: dict[str, Any], seen: asyncio.Future[dict[str, Any]] = seen) -> None:
            if not seen.done():
                seen.set_result(event)

        outcomes.append(
            asyncio.ensure_future(
                stream_file(srv.ws("segmented"), audio, real_time=True, on_event=first)
            )
        )
        event = await asyncio.wait_for(seen, 10)
        if event["type"] == "ready":
            admitted.append(event["session_id"])
        else:
            assert event["code"] == "overloaded"
    assert len(admitted) == 4
    status, body = health(srv)
    assert (status, body["status"], body["server_streams"]) == (503, "full", 4)
    assert sum(p["streams"] for p in body["processes"]) == 4
    for outcome in outcomes:
        outcome.cancel()
    await asyncio.gather(*outcomes, return_exceptions=True)


async def test_sigterm_drains_both_processes(launch: Callable[..., Any]) -> None:
    srv = launch(workers=2, env=LOGS, drain_seconds=8.0)
    both_up(srv)
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    reference = await stream_file(srv.ws("segmented"), audio)
    assert reference.ok and reference.segments
    # Sixteen, so that the kernel's spread puts some on each process: eight land all on one
    # in one run of 128, and once did.
    running = [
        asyncio.ensure_future(stream_file(srv.ws("segmented"), audio, real_time=True))
        for _ in range(16)
    ]
    await asyncio.sleep(1.0)
    srv.process.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*running)
    placed = workers_of(srv)
    assert {placed[r.ready["session_id"]] for r in results if r.ready} == {0, 1}
    for result in results:
        assert result.ok, result.events
        assert result.segments == reference.segments  # every final delivered
    assert await asyncio.to_thread(srv.process.wait, 20) == 0


async def test_a_killed_process_comes_back_and_the_other_streams_go_on(
    launch: Callable[..., Any],
) -> None:
    srv = launch(workers=2, env=LOGS)
    before = both_up(srv)
    audio = load_audio(AUDIO / "jfk.wav")
    reference = await stream_file(srv.ws("segmented"), audio)
    running = [
        asyncio.ensure_future(stream_file(srv.ws("segmented"), audio, real_time=True))
        for _ in range(10)
    ]
    await asyncio.sleep(2.0)
    victim = before[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    results = await asyncio.gather(*running)
    placed = workers_of(srv)
    on = Counter(placed[r.ready["session_id"]] for r in results if r.ready)
    assert on[0] and on[1], on
    for result in results:
        assert result.ready is not None
        if placed[result.ready["session_id"]] == 0:
            # The connection ends with its process: no done, a close code, no hang.
            assert result.done is None
            assert result.close_code == 1006
        else:
            assert result.ok, result.events
            assert result.segments == reference.segments
    # The supervisor starts it again, and it serves.
    deadline = killed_at + 30
    while time.monotonic() < deadline:
        row = health(srv)[1]["processes"][0]
        if row["pid"] and row["pid"] != victim["pid"]:
            break
        await asyncio.sleep(0.1)
    assert row["restarts"] == 1 and row["pid"] != victim["pid"]
    again = await asyncio.gather(*(stream_file(srv.ws("segmented"), audio) for _ in range(8)))
    assert all(r.ok for r in again)
    assert srv.stop() == 0
