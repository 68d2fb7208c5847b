"""A client faster than the server, and one that goes away, on a real server.

- An unpaced sender is slowed by backpressure (the server reads no more while its stream is
  busy) and still gets every result and ``done``; the server's WebSocket keepalive never
  times out a peer whose data is waiting to be read (its pong is behind that data).
- A client that closes its socket with work queued frees that work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.client import load_audio

pytestmark = pytest.mark.e2e

AUDIO = load_audio(Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "jfk.wav")


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A model far slower than an unpaced client, and pings that must be answered fast."""
    env = {
        "STREAMER_MODEL__DELAY": "0.1",
        "STREAMER_SERVER__WS_PING_INTERVAL_SECONDS": "0.3",
        "STREAMER_SERVER__WS_PING_TIMEOUT_SECONDS": "0.3",
    }
    server = start_server(tmp_path_factory.mktemp("backpressure"), env=env)
    yield server
    server.stop()


def long_audio(seconds: int) -> bytes:
    whole = AUDIO.data * (seconds // 11 + 1)
    return whole[: seconds * AUDIO.bytes_per_second]


async def test_an_unpaced_sender_is_slowed_and_gets_every_result_and_done(
    slow: ServerProcess,
) -> None:
    seconds = 120  # about 3.8 MB: more than the socket buffers hold
    data = long_audio(seconds)
    events: list[dict[str, Any]] = []
    async with connect(slow.ws("simple"), max_size=None) as ws:

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    events.append(json.loads(message))

        reader = asyncio.create_task(read())
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        step = AUDIO.bytes_per_second // 10  # 100 ms messages, as fast as the socket takes
        for offset in range(0, len(data), step):
            await ws.send(data[offset : offset + step])
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        async with asyncio.timeout(60):
            await reader
    types = [e["type"] for e in events]
    assert types[0] == "ready" and types[-1] == "done", (types[-3:], ws.close_code, ws.close_reason)
    assert sum(e["end_time"] - e["start_time"] for e in events if e["type"] == "segment") == (
        pytest.approx(seconds)
    )
    assert events[-1]["audio_seconds"] == seconds
    assert (ws.close_code, ws.close_reason) == (1000, "")


@pytest.fixture(scope="module")
def slower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Half a second a call: eight seconds of audio is two seconds of work."""
    env = {"STREAMER_MODEL__DELAY": "0.5"}
    server = start_server(tmp_path_factory.mktemp("dropped"), env=env)
    yield server
    server.stop()


async def test_a_client_that_closes_its_socket_frees_its_queued_work_at_once(
    slower: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=slower.http) as http:

        async def health() -> dict[str, Any]:
            answer: dict[str, Any] = (await http.get("/api/v1/health")).json()
            return answer

        async with connect(slower.ws("simple")) as ws:
            await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
            await ws.recv()  # ready
            await ws.send(long_audio(8))  # eight inferences of 0.5 s each, two workers
            async with asyncio.timeout(60):  # until the work is queued
                while not (await health())["queued_inferences"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            ws.transport.close()  # a TCP FIN, no closing handshake
        async with asyncio.timeout(30):  # a bound for a busy machine, not the measure
            while True:
                now = await health()
                if now["queued_inferences"] == 0 and sum(now["streams"].values()) == 0:
                    break
                await asyncio.sleep(0.01)
    # Freed at once means the queued work was withdrawn, not run: fewer inputs ran than
    # the eight the audio asked for. (How fast: benchmarks, not this test.)
    assert slower.gauge("streamer_batch_size_sum") < 8
