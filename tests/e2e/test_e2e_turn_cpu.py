"""The turn engine's CPU, as a metric and in admission, on a real server: a ``/v2/listen``
stream of real speech ends its turn by the end-of-turn model, and the server counts that
model's CPU, the stream as one that detects turns, and a capacity for such streams; and
the front end's other threads' CPU (the VAD engine's, the event loop's) beside it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000&eot_threshold=0.5"
CHUNK = 1600  # 100 ms


async def test_a_turn_ended_by_the_model_is_counted_in_its_cpu_and_in_admission(
    launch: Callable[..., Any],
) -> None:
    srv = launch()
    speech, rate = sf.read(AUDIO / "jfk.wav", dtype="int16")
    assert rate == 16000
    silence = np.zeros(CHUNK, dtype=np.int16).tobytes()
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/v2/listen?{QUERY}") as ws:
        assert json.loads(await ws.recv())["type"] == "Connected"
        for start in range(0, len(speech), CHUNK):
            await ws.send(speech[start : start + CHUNK].tobytes())

        async def pace_silence() -> None:
            # The pause grows with the audio sent: a real-time one leaves the model time
            # to answer before the 5 s timeout would end the turn.
            while True:
                await ws.send(silence)
                await asyncio.sleep(CHUNK / 16000)

        pacing = asyncio.create_task(pace_silence())
        try:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "TurnInfo" and message["event"] == "EndOfTurn":
                    break
        finally:
            pacing.cancel()
        assert message["trigger"] == "model", message
        health, exposition = await asyncio.to_thread(read, srv)
        await ws.send(json.dumps({"type": "CloseStream"}))
    assert health["turn_streams"] == 1
    assert 0 <= health["turn_capacity"] <= health["capacity"]
    assert "turn_cpu_cores" in health["pressure"]
    assert sample(exposition, "streamer_turn_model_seconds_count") >= 1
    cpu = sample(exposition, "streamer_turn_engine_cpu_seconds_total")
    assert 0 < cpu < sample(exposition, "process_cpu_seconds_total")
    # The front end's other threads: the VAD engine's and the event loop's, each its own.
    vad_cpu = sample(exposition, "streamer_vad_engine_cpu_seconds_total")
    loop_cpu = sample(exposition, "streamer_event_loop_cpu_seconds_total")
    assert vad_cpu > 0 and loop_cpu > 0
    assert cpu + vad_cpu + loop_cpu < sample(exposition, "process_cpu_seconds_total")
    assert sample(exposition, "streamer_estimated_turn_stream_capacity") >= 0


def read(srv: Any) -> tuple[dict[str, Any], str]:
    """The server's health and its metrics now."""
    health = httpx.get(f"{srv.http}/api/v1/health", timeout=5).json()
    return health, httpx.get(f"{srv.http}/metrics", timeout=5).text


def sample(exposition: str, name: str) -> float:
    """The one unlabelled sample called ``name``; a missing one fails."""
    values = [
        float(line.split()[1]) for line in exposition.splitlines() if line.startswith(name + " ")
    ]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


async def test_the_event_loop_s_cpu_counts_from_serving_not_from_start_up(
    launch: Callable[..., Any],
) -> None:
    # The loop runs on the process's main thread, which also imported everything and built
    # the server; its counter starts once the server serves, so an idle one has spent
    # little of the process's CPU so far.
    srv = launch()
    _, exposition = await asyncio.to_thread(read, srv)
    loop_cpu = sample(exposition, "streamer_event_loop_cpu_seconds_total")
    assert 0 <= loop_cpu < sample(exposition, "process_cpu_seconds_total") / 2
