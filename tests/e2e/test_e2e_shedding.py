"""Shedding load before falling behind, on a real server starved of CPU.

The test starves the server itself, whatever else the machine is doing: it stops the
whole process (SIGSTOP) for 1.2 s out of every 1.3 s. Its event loop falls behind, and it
must refuse new streams (overloaded, 1013) while the admitted ones are told how far behind
they are (falling_behind) and still get every result once it runs freely again. (Starving
it with CPU hogs and SCHED_IDLE instead depended on the machine being otherwise idle: any
other load kept the server starved after the hogs stopped.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
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


STOPPED = 1.2
RUNNING = 0.1
"""The starved server's duty cycle, in seconds: stopped, then let run."""


@contextmanager
def starved(pid: int) -> Iterator[None]:
    """The process ``pid`` stopped ``STOPPED`` s out of every ``STOPPED + RUNNING``, until
    the block ends (then it runs freely)."""
    done = threading.Event()

    def cycle() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            done.wait(STOPPED)
            os.kill(pid, signal.SIGCONT)
            done.wait(RUNNING)

    thread = threading.Thread(target=cycle, name="starve", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        os.kill(pid, signal.SIGCONT)


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
        with starved(srv.process.pid):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, body = await status_of(http, srv)
                if body["status"] == "full":
                    break
                await asyncio.sleep(0.2)
            assert (status, body["status"]) == (503, "full"), body
            assert body["capacity"] == 0
            assert body["pressure"]["loop_lag"] > 0.15
            refused = await stream_file(srv.ws("segmented"), audio, open_timeout=30)
            await asyncio.sleep(4.0)  # the admitted streams are seconds behind by now
        assert [e["code"] for e in refused.errors] == ["overloaded"]
        assert refused.close_code == 1013 and refused.ready is None
        assert "not keeping up" in refused.errors[0]["message"]

        # Once it runs freely the server catches up and admits again.
        deadline = time.monotonic() + 60
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
    # Once it runs freely, the streams are back to real time: their last results are on time
    # (within the falling-behind bound of their audio).
    for result in results:
        lags = [
            t - e["end_time"]
            for e, t in zip(result.events, result.arrivals, strict=True)
            if e["type"] == "segment"
        ]
        assert lags[-1] < 1.0, lags
