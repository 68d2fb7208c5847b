"""Shedding load before falling behind, on a real server starved by CPU hogs.

Every thread of the server runs at the lowest priority (SCHED_IDLE) and two busy
processes per core start during a run: the server gets a sliver of the CPU, its event loop
falls behind, and it must refuse new streams (overloaded, 1013) while the admitted ones are
told how far behind they are (falling_behind) and still get every result once the hogs
stop. (Nice 19 on the main thread alone was not enough: the VAD and model threads kept
their share, and the streams were only just behind.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


@contextmanager
def hogs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes spinning on each usable core, until the block ends."""
    started = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(2 * len(os.sched_getaffinity(0)))
    ]
    try:
        yield started
    finally:
        for hog in started:
            hog.kill()
            hog.wait()


def lowest_priority(pid: int) -> None:
    """Every thread of ``pid`` runs only when a core would otherwise idle (SCHED_IDLE: a
    thread's policy is its own, and the threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setscheduler(int(task), os.SCHED_IDLE, os.sched_param(0))


async def status_of(http: httpx.AsyncClient, srv: Any) -> tuple[int, dict[str, Any]]:
    response = await http.get(f"{srv.http}/api/v1/health")
    return response.status_code, response.json()


async def test_a_starved_server_refuses_new_streams_and_its_streams_recover(
    launch: Callable[..., Any],
) -> None:
    srv = launch(
        env={
            "STREAMER_SERVER__MAX_LOOP_LAG_MS": "150",
            "STREAMER_SERVER__MAX_STREAM_LAG_SECONDS": "1.0",
        }
    )
    lowest_priority(srv.process.pid)
    audio = load_audio(AUDIO / "jfk.wav")
    reference = await stream_file(srv.ws("segmented"), audio)
    assert reference.ok and reference.segments
    admitted = [
        asyncio.ensure_future(
            stream_file(srv.ws("segmented"), audio, real_time=True, results_timeout=90)
        )
        for _ in range(4)
    ]
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(timeout=20.0) as http:
        with hogs():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status, body = await status_of(http, srv)
                if body["status"] == "full":
                    break
                await asyncio.sleep(0.2)
            assert (status, body["status"]) == (503, "full"), body
            assert body["capacity"] == 0
            assert body["pressure"]["loop_lag"] > 0.15
            refused = await stream_file(srv.ws("segmented"), audio, open_timeout=30)
            await asyncio.sleep(1.0)  # the admitted streams are seconds behind by now
        assert [e["code"] for e in refused.errors] == ["overloaded"]
        assert refused.close_code == 1013 and refused.ready is None
        assert "not keeping up" in refused.errors[0]["message"]

        # Once the hogs are gone the server catches up and admits again.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = await status_of(http, srv)
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert (status, body["status"]) == (200, "ok"), body
    later = await stream_file(srv.ws("segmented"), audio)
    assert later.ok and later.segments == reference.segments

    results = await asyncio.gather(*admitted)
    behind = []
    for result in results:
        # Every result arrives, late: the lag is reported, not hidden.
        assert result.done is not None
        assert result.segments == reference.segments
        assert {e["code"] for e in result.errors} <= {"falling_behind"}
        behind += result.errors
    assert behind, "a stream held up for seconds is told it is behind"
    assert all("behind its audio" in e["message"] for e in behind)
    # After the hogs, the streams are back to real time: their last results are on time
    # (within the falling-behind bound of their audio).
    for result in results:
        lags = [
            t - e["end_time"]
            for e, t in zip(result.events, result.arrivals, strict=True)
            if e["type"] == "segment"
        ]
        assert lags[-1] < 1.0, lags
