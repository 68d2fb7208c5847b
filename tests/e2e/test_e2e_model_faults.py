"""Model faults on a real server: each failed result says whether it is worth retrying, and a
model that hangs costs its stream one ``inference_timeout`` but never wedges the server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


@pytest.mark.parametrize(
    ("env", "code", "retryable"),
    [
        ({"STREAMER_MODEL__FAILURE_RATE": "1"}, "model_error", False),
        ({"STREAMER_MODEL__PANIC_RATE": "1"}, "model_crashed", False),
        (
            {
                "STREAMER_INFERENCE__POOL": "process",
                "STREAMER_INFERENCE__WORKERS": "1",
                "STREAMER_MODEL__PANIC_RATE": "1",
                "STREAMER_MODEL__PANIC_KILLS_PROCESS": "true",
            },
            "worker_crashed",
            True,
        ),
        (
            {"STREAMER_MODEL__DELAY": "2", "STREAMER_INFERENCE__DEADLINE_SECONDS": "0.2"},
            "inference_timeout",
            True,
        ),
    ],
)
async def test_a_failed_result_says_whether_to_retry(
    launch: Callable[..., Any], env: dict[str, str], code: str, retryable: bool
) -> None:
    srv = launch(env=env)
    result = await stream_file(srv.ws(), load_audio(AUDIO / "big_dog_8k.wav"))
    assert result.done is not None and result.errors
    for error in result.errors:
        assert (error["code"], error["retryable"]) == (code, retryable), error


# A model that hangs.

HANG_FOREVER = {
    "STREAMER_MODEL__HANG_RATE": "1",
    "STREAMER_INFERENCE__WORKERS": "2",
    "STREAMER_INFERENCE__DEADLINE_SECONDS": "0.4",
    "STREAMER_INFERENCE__MAX_REPLACEMENT_THREADS": "2",
    "STREAMER_SERVER__SHUTDOWN_TIMEOUT_SECONDS": "2",
    # The new stream below must reach the stuck model: the capacity estimate, which counts
    # the workers' busy time, could refuse it as overloaded instead.
    "STREAMER_SERVER__ADMIT_WITHIN_ESTIMATE": "false",
}


def health(srv: Any) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{srv.http}/api/v1/health", timeout=5)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def metric(srv: Any, name: str) -> float:
    text = httpx.get(f"{srv.http}/metrics", timeout=5).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def chunks_of(result: Any) -> list[tuple[float, float]]:
    """The span of every result, segment or error, in order."""
    return [
        (e["start_time"], e["end_time"])
        for e in result.events
        if e["type"] == "segment" or (e["type"] == "error" and "start_time" in e)
    ]


async def test_a_hung_model_costs_timeouts_but_never_wedges_the_server(
    launch: Callable[..., Any],
) -> None:
    srv = launch(env=HANG_FOREVER)
    audio = load_audio(AUDIO / "jfk.wav")  # 11 chunks of 1 s: more than run at once
    first = await stream_file(srv.ws(), audio, results_timeout=30)
    assert first.done is not None, first.events  # queued jobs have deadlines too
    assert first.segments == []
    assert len(first.errors) >= 3
    for error in first.errors:
        assert (error["code"], error["retryable"]) == ("inference_timeout", True)
    assert chunks_of(first) == sorted(chunks_of(first))
    # Two threads were replaced; the next ones stuck could not be: capacity is lost, and
    # the health check says so (and sends traffic elsewhere).
    status, body = health(srv)
    assert (status, body["status"]) == (503, "stalled"), body
    assert body["workers"] == 2 and body["available_workers"] == 0
    assert body["stuck_workers"] == 4
    assert metric(srv, "streamer_workers_written_off_total") == 4
    assert metric(srv, "streamer_workers_stuck") == 4
    assert metric(srv, "streamer_inference_timeouts_total") == len(first.errors)
    output = srv.output()
    assert "written off and replaced" in output and "not replaced" in output
    # A new stream is not wedged: its inferences time out in the queue, and it ends.
    second = await stream_file(srv.ws(), load_audio(AUDIO / "big_dog_8k.wav"), results_timeout=30)
    assert second.done is not None and second.errors
    assert {e["code"] for e in second.errors} == {"inference_timeout"}
    assert "Traceback" not in srv.output()


async def test_a_stuck_thread_that_returns_is_discarded_and_capacity_comes_back(
    launch: Callable[..., Any],
) -> None:
    srv = launch(
        env={
            "STREAMER_MODEL__HANG_RATE": "0.5",
            "STREAMER_MODEL__HANG_SECONDS": "1.0",
            "STREAMER_MODEL__SEED": "3",
            "STREAMER_INFERENCE__WORKERS": "2",
            "STREAMER_INFERENCE__DEADLINE_SECONDS": "0.3",
        }
    )
    audio = load_audio(AUDIO / "jfk.wav")
    result = await stream_file(srv.ws(), audio, results_timeout=30)
    assert result.done is not None
    # Every chunk has exactly one outcome: its count, or a timeout; none is lost or doubled.
    spans = chunks_of(result)
    assert spans == sorted(set(spans))
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert result.errors and len(result.segments) + len(result.errors) == len(spans)
    assert {e["code"] for e in result.errors} == {"inference_timeout"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, body = health(srv)
        if body["stuck_workers"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (status, body["status"], body["available_workers"]) == (200, "ok", 2), body
    assert 1 <= metric(srv, "streamer_workers_written_off_total") <= len(result.errors)
    assert "result discarded" in srv.output()
    later = await stream_file(srv.ws(), load_audio(AUDIO / "big_dog_8k.wav"), results_timeout=30)
    assert later.done is not None


async def open_stream_and_signal(srv: Any, signals: int) -> float:
    """Start a stream on a hung model, send SIGTERM ``signals`` times; seconds to exit."""
    async with connect(srv.ws(), compression=None) as ws:
        start = {
            "request": "start",
            "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16},
        }
        await ws.send(json.dumps(start))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(b"\x00\x00" * 16000 * 5)  # five chunks: two run (and hang), three queue
        await asyncio.sleep(0.2)
        began = time.monotonic()
        for _ in range(signals):
            srv.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
        try:
            await asyncio.to_thread(srv.process.wait, 30)
        except subprocess.TimeoutExpired:
            pass
        return time.monotonic() - began


@pytest.mark.parametrize("signals", [1, 2])
async def test_sigterm_ends_the_process_whatever_the_model_threads_do(
    launch: Callable[..., Any], signals: int
) -> None:
    env = {
        **HANG_FOREVER,
        "STREAMER_INFERENCE__DEADLINE_SECONDS": "30",  # no help from it
        "STREAMER_SERVER__SHUTDOWN_TIMEOUT_SECONDS": "4",
    }
    srv = launch(env=env, drain_seconds=1.0)
    took = await open_stream_and_signal(srv, signals)
    assert srv.process.poll() is not None, "the server did not exit"
    bound = 1.0 + 4.0 if signals == 1 else 2.0
    assert took < bound + 1.5, took  # the bound, and a margin for a busy machine
