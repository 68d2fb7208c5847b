"""Idle connections on a real server: told with ``idle_timeout``, finals flushed, then closed
(WebSocket 1000 with the reason, gRPC DEADLINE_EXCEEDED)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import grpc
import pytest
from conftest import HOST, ServerProcess, server_fixture
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.client import load_audio
from streamer.codecs.v1_proto import event_to_dict
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

AUDIO = load_audio(Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "jfk.wav")


impatient = server_fixture("idle", {"STREAMER_STREAM__IDLE_SECONDS": "0.5"}, grpc=True)


async def test_a_websocket_that_stops_sending_is_told_flushed_and_closed(
    impatient: ServerProcess,
) -> None:
    async with connect(impatient.ws("simple")) as ws:
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        await ws.send(AUDIO.data[: 3 * AUDIO.bytes_per_second])
        events = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    events.append(json.loads(await ws.recv()))
    types = [e["type"] for e in events]
    assert types[0] == "ready" and types[-1] == "done"
    assert [e["code"] for e in events if e["type"] == "error"] == ["idle_timeout"]
    assert sum(e["end_time"] - e["start_time"] for e in events if e["type"] == "segment") == 3
    assert (ws.close_code, ws.close_reason) == (1000, "idle_timeout")


async def test_a_websocket_that_never_starts_is_closed(impatient: ServerProcess) -> None:
    async with connect(impatient.ws("segmented")) as ws:
        async with asyncio.timeout(10):
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
    assert error["code"] == "idle_timeout"
    assert ws.close_code == 1000


async def test_an_idle_grpc_call_ends_deadline_exceeded(impatient: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{impatient.grpc_port}") as channel:
        call = pb_grpc.StreamerStub(channel).Simple()
        fmt = pb.AudioFormat(channels=1, sample_rate=AUDIO.sample_rate, bit_depth=16)
        await call.write(pb.StreamRequest(config=pb.StreamConfig(format=fmt)))
        events = []
        with contextlib.suppress(grpc.aio.AioRpcError):  # the status ends the reading
            async with asyncio.timeout(10):
                while (message := await call.read()) is not grpc.aio.EOF:
                    events.append(event_to_dict(message))
        assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert [e["type"] for e in events if e] == ["ready", "error", "done"]


# A second a call, one call at a time, two in flight a stream: a client that sends six
# seconds at once waits on backpressure, then on its last results, far past 0.5 s.
impatient_and_slow = server_fixture(
    "slow",
    {
        "STREAMER_STREAM__IDLE_SECONDS": "0.5",
        "STREAMER_MODEL__DELAY": "1.0",
        "STREAMER_INFERENCE__WORKERS": "1",
        "STREAMER_STREAM__MAX_IN_FLIGHT": "2",
    },
)


async def test_a_client_waiting_on_the_server_is_not_idle(
    impatient_and_slow: ServerProcess,
) -> None:
    async with connect(impatient_and_slow.ws("simple")) as ws:
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        for second in range(6):
            chunk = AUDIO.data[second * AUDIO.bytes_per_second :][: AUDIO.bytes_per_second]
            await ws.send(chunk)
        await ws.send(json.dumps({"request": "stop"}))
        events = []
        async with asyncio.timeout(30):
            while not events or events[-1]["type"] != "done":
                events.append(json.loads(await ws.recv()))
        # Done, the client idles: now the idle limit holds.
        async with asyncio.timeout(10):
            after = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
    assert [e for e in events if e["type"] == "error"] == []
    assert [e["start_time"] for e in events if e["type"] == "segment"] == [0, 1, 2, 3, 4, 5]
    assert after["code"] == "idle_timeout" and ws.close_code == 1000
