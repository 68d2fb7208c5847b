"""A client that stops reading, on a real socket: once the socket's buffers and its bounded
outbox are full and a final would be lost, the server ends the stream with
``slow_consumer`` and frees it at once. A client that reads again gets the close (1008,
``slow_consumer``); one that never reads again cannot be sent a close frame, and its
connection is aborted rather than held open on unsent bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from conftest import HOST, ServerProcess, server_fixture
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e

RATE = 16000
FORMAT = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
SLOW = 'streamer_streams_ended_total{outcome="slow_consumer",route="simple"}'


small_outbox = server_fixture(
    "slow-reader",
    {
        "STREAMER_SERVER__MAX_PENDING_EVENTS": "10",
        # A hundred finals a second of audio: far more events than the kernel's buffers hold.
        "STREAMER_STREAM__CHUNK_SECONDS": "0.01",
        "STREAMER_STREAM__IDLE_SECONDS": "0",
        "STREAMER_SERVER__MAX_MESSAGES_PER_SECOND": "0",
    },
)


def metric(server: ServerProcess, sample: str) -> float:
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(sample)]
    assert len(values) == 1, sample
    return float(values[0])


def small_window(server: ServerProcess) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no slack in the kernel
    sock.connect((HOST, server.port))
    return sock


async def send_audio(ws: ClientConnection, seconds: int) -> None:
    """Start a stream and send ``seconds`` of audio, half a second a message, reading
    nothing; returns when everything is sent or the connection is gone."""
    await ws.send(json.dumps({"request": "start", "format": FORMAT}))
    step = RATE  # half a second of 16-bit samples
    audio = np.zeros(RATE * seconds, dtype="<i2").tobytes()
    with contextlib.suppress(ConnectionClosed):
        for offset in range(0, len(audio), step):
            await ws.send(audio[offset : offset + step])


async def until(check: Callable[[], bool], seconds: float) -> None:
    """Poll the server (its metrics, from outside) until ``check`` holds."""
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(check):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_a_client_that_reads_again_is_told_it_was_too_slow(
    small_outbox: ServerProcess,
) -> None:
    before = metric(small_outbox, SLOW)
    # max_queue=1: the client library reads one message ahead, then stops reading.
    sock = small_window(small_outbox)
    async with connect(small_outbox.ws("simple"), sock=sock, max_queue=1) as ws:
        sending = asyncio.create_task(send_audio(ws, 900))  # 90,000 finals' worth
        await until(lambda: metric(small_outbox, SLOW) > before, 30)
        received = 0
        with pytest.raises(ConnectionClosed):  # once the close timeout (10 s) ends it
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
                    received += 1
        sending.cancel()
    assert (ws.close_code, ws.close_reason) == (1008, "slow_consumer")
    assert 10 < received < 90_000  # what the buffers held, not everything
    assert small_outbox.gauge("streamer_streams_active") == 0


async def test_a_client_that_never_reads_again_is_cut_off(small_outbox: ServerProcess) -> None:
    before = metric(small_outbox, SLOW)
    sock = small_window(small_outbox)
    async with connect(small_outbox.ws("simple"), sock=sock, max_queue=1) as ws:
        # Without a bound on the close, the server's reading stalls with its writing and
        # this sender waits forever.
        async with asyncio.timeout(60):
            await send_audio(ws, 900)
        assert ws.state.name == "CLOSED"  # cut off, not sent everything
    assert metric(small_outbox, SLOW) == before + 1
    await until(lambda: small_outbox.gauge("streamer_connections_active") == 0, 10)
    assert small_outbox.gauge("streamer_streams_active") == 0
