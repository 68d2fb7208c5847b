"""Limits of a stream's length and of a connection's message rate, on a real server.

A stream past ``[stream] max_audio_seconds`` or ``max_wall_seconds`` gets its finals and
``done``, then ``session_expired`` and the close (WebSocket 1000 with the reason, gRPC
DEADLINE_EXCEEDED); a connection past ``[server] max_messages_per_second`` gets
``rate_limited`` and close 1008 (gRPC RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import HOST, ServerProcess, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.client import load_audio
from streamer.codecs.v1_proto import event_to_dict
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

AUDIO = load_audio(Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "jfk.wav")
KEEPALIVE = json.dumps({"request": "keepalive"})


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "STREAMER_STREAM__MAX_AUDIO_SECONDS": "3",
        "STREAMER_STREAM__MAX_WALL_SECONDS": "1.5",
        "STREAMER_SERVER__MAX_MESSAGES_PER_SECOND": "50",
    }
    server = start_server(tmp_path_factory.mktemp("stream-limits"), env=env, grpc=True)
    yield server
    server.stop()


async def read_to_close(ws: Any, seconds: float = 20.0) -> list[dict[str, Any]]:
    events = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(seconds):
            while True:
                events.append(json.loads(await ws.recv()))
    return events


def audio_seconds(events: list[dict[str, Any]]) -> float:
    return sum(e["end_time"] - e["start_time"] for e in events if e["type"] == "segment")


async def test_audio_past_max_audio_seconds_gets_finals_done_then_session_expired(
    limited: ServerProcess,
) -> None:
    async with connect(limited.ws("simple")) as ws:
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        for second in range(5):
            chunk = AUDIO.data[
                second * AUDIO.bytes_per_second : (second + 1) * AUDIO.bytes_per_second
            ]
            with contextlib.suppress(ConnectionClosed):
                await ws.send(chunk)
        events = await read_to_close(ws)
    types = [e["type"] for e in events]
    assert types[0] == "ready" and types[-2:] == ["done", "error"]
    assert events[-2]["audio_seconds"] == 3.0
    assert audio_seconds(events) == 3.0  # every final of the first 3 s, nothing after
    assert events[-1]["code"] == "session_expired" and "3 s of audio" in events[-1]["message"]
    assert (ws.close_code, ws.close_reason) == (1000, "session_expired")


async def test_a_stream_open_past_max_wall_seconds_expires(limited: ServerProcess) -> None:
    async with connect(limited.ws("simple")) as ws:
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        await ws.send(AUDIO.data[: 2 * AUDIO.bytes_per_second])
        events = await read_to_close(ws)  # nothing more is sent; the wall limit ends it
    assert [e["type"] for e in events][-2:] == ["done", "error"]
    assert audio_seconds(events) == 2.0
    assert events[-1]["code"] == "session_expired"
    assert (ws.close_code, ws.close_reason) == (1000, "session_expired")


async def test_a_grpc_stream_past_its_limit_ends_deadline_exceeded(
    limited: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{limited.grpc_port}") as channel:
        call = pb_grpc.StreamerStub(channel).Simple()
        fmt = pb.AudioFormat(channels=1, sample_rate=AUDIO.sample_rate, bit_depth=16)
        await call.write(pb.StreamRequest(config=pb.StreamConfig(format=fmt)))
        await call.write(pb.StreamRequest(audio=AUDIO.data[: 4 * AUDIO.bytes_per_second]))
        events = []
        with contextlib.suppress(grpc.aio.AioRpcError):
            async with asyncio.timeout(20):
                while (message := await call.read()) is not grpc.aio.EOF:
                    events.append(event_to_dict(message))
        assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    received = [e for e in events if e]
    assert [e["type"] for e in received][-2:] == ["done", "error"]
    assert received[-1]["code"] == "session_expired"
    assert audio_seconds(received) == 3.0


async def test_a_keepalive_flood_is_rate_limited_and_closed_1008(limited: ServerProcess) -> None:
    sent = 0
    async with connect(limited.ws("simple")) as ws:
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(20):
                while True:  # as fast as the socket takes them
                    await ws.send(KEEPALIVE)
                    sent += 1
                    if sent % 64 == 0:
                        await asyncio.sleep(0)  # let the client read what comes back
        events = await read_to_close(ws)
    assert [(e["type"], e["code"]) for e in events] == [("error", "rate_limited")]
    assert events[0]["message"] == "more than 50 messages a second"
    assert ws.close_code == 1008
    assert sent >= 50


async def test_messages_at_the_rate_are_served(limited: ServerProcess) -> None:
    async with connect(limited.ws("simple")) as ws:
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        for _ in range(20):  # 40 messages a second, under the limit of 50
            await ws.send(KEEPALIVE)
            await asyncio.sleep(0.025)
        await ws.send(AUDIO.data[: AUDIO.bytes_per_second])
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        events = await read_to_close(ws)
    assert [e["type"] for e in events] == ["ready", "segment", "done"]
    assert ws.close_code == 1000
