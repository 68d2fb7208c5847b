"""A client that reads only after its stop, on a real socket, on both transports: it gets
every final and ``done`` and a normal close, because the server holds what is queued for
it past the stream's end (the outbox's close grace); one that reads only after the grace
is closed with ``slow_consumer`` (1008, RESOURCE_EXHAUSTED), counted: a normal close never
hides results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import HOST, ServerProcess, server_fixture
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.codecs.v1_proto import start_to_config
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

RATE = 16000
FORMAT = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
CHUNK = 0.01
LATE = 12.0
"""Seconds the client waits after its stop before it reads anything: well past a fixed 5 s
grace, within the grace of the thousands of events still queued then."""

late_reader = server_fixture(
    "late-reader",
    {
        # A hundred finals a second of audio: far more than the kernel's and HTTP/2's
        # buffers hold, so most of them are still queued on the server at the stop.
        "STREAMER_STREAM__CHUNK_SECONDS": str(CHUNK),
        "STREAMER_SERVER__MAX_PENDING_EVENTS": "100000",
        "STREAMER_STREAM__IDLE_SECONDS": "0",
        "STREAMER_SERVER__MAX_MESSAGES_PER_SECOND": "0",
    },
    grpc=True,
)


short_grace = server_fixture(
    "short-grace",
    {
        "STREAMER_STREAM__CHUNK_SECONDS": str(CHUNK),
        "STREAMER_SERVER__MAX_PENDING_EVENTS": "100000",
        "STREAMER_STREAM__IDLE_SECONDS": "0",
        "STREAMER_SERVER__MAX_MESSAGES_PER_SECOND": "0",
        "STREAMER_SERVER__CLOSE_GRACE_SECONDS": "0.5",  # 3 s at most, however much is queued
    },
    grpc=True,
)
TOO_LATE = 6.0
"""Seconds past the stream's end: past the short grace's 3 s bound, whatever was queued."""


def audio(seconds: int) -> bytes:
    return np.zeros(RATE * seconds, dtype="<i2").tobytes()


def unread(server: ServerProcess) -> float:
    return server.gauge("streamer_unread_results_closes_total")


def streams_ended(server: ServerProcess) -> float:
    return server.gauge("streamer_streams_ended_total")


async def send_all(call: Any, config: Any, data: bytes) -> None:
    """Write a whole gRPC stream, a second a message, then stop, without reading."""
    await call.write(pb.StreamRequest(config=config))
    for offset in range(0, len(data), RATE):
        await call.write(pb.StreamRequest(audio=data[offset : offset + RATE]))
    await call.write(pb.StreamRequest(stop=pb.Stop()))
    await call.done_writing()


async def after_the_stream_ends(server: ServerProcess, before: float) -> None:
    """Wait until the server has ended the stream (its results all queued and the grace
    begun), however long a busy machine takes to get there, then ``TOO_LATE`` more."""
    async with asyncio.timeout(120):
        while await asyncio.to_thread(streams_ended, server) <= before:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    await asyncio.sleep(TOO_LATE)


async def test_a_websocket_client_that_reads_late_gets_every_final_and_done(
    late_reader: ServerProcess,
) -> None:
    seconds = 800  # 80,000 finals: over twice what the kernel's buffers can hold
    before = unread(late_reader)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no slack in the kernel
    sock.connect((HOST, late_reader.port))
    data = audio(seconds)
    async with connect(late_reader.ws("simple"), sock=sock, max_queue=1, max_size=None) as ws:
        await ws.send(json.dumps({"request": "start", "format": FORMAT}))
        for offset in range(0, len(data), RATE):
            await ws.send(data[offset : offset + RATE])
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        await asyncio.sleep(LATE)  # the late reader: nothing read until now
        finals, kinds = 0, []
        async with asyncio.timeout(120):
            async for frame in ws:
                event = json.loads(frame)
                kinds.append(event["type"])
                finals += event.get("is_final") is True
    assert (ws.close_code, kinds[-1]) == (1000, "done"), (ws.close_code, ws.close_reason)
    assert finals == seconds / CHUNK
    assert unread(late_reader) == before


async def test_a_grpc_client_that_reads_late_gets_every_final_and_done(
    late_reader: ServerProcess,
) -> None:
    seconds = 400
    before = unread(late_reader)
    config = start_to_config({"format": FORMAT})
    data = audio(seconds)
    # No BDP probing: the call's window stays at HTTP/2's 64 KiB, the client holds no more.
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(late_reader.grpc_target, options=options) as channel:
        call = pb_grpc.StreamerStub(channel).Simple()
        await send_all(call, config, data)
        await asyncio.sleep(LATE)
        finals, kinds = 0, []
        async with asyncio.timeout(120):
            async for event in call:
                kind = event.WhichOneof("event")
                kinds.append(kind)
                finals += kind == "segment" and event.segment.is_final
        status = await call.code()
    assert (status, kinds[-1]) == (grpc.StatusCode.OK, "done")
    assert finals == seconds / CHUNK
    assert unread(late_reader) == before


async def test_a_websocket_client_that_reads_after_the_grace_is_told_it_was_too_slow(
    short_grace: ServerProcess,
) -> None:
    seconds = 800  # 80,000 finals: over twice what the kernel's buffers can hold
    before, streams = unread(short_grace), streams_ended(short_grace)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, short_grace.port))
    data = audio(seconds)
    async with connect(short_grace.ws("simple"), sock=sock, max_queue=1, max_size=None) as ws:
        await ws.send(json.dumps({"request": "start", "format": FORMAT}))
        for offset in range(0, len(data), RATE):
            await ws.send(data[offset : offset + RATE])
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        await after_the_stream_ends(short_grace, streams)
        finals, kinds = 0, []
        with contextlib.suppress(ConnectionClosed):  # an error close ends the iteration so
            async with asyncio.timeout(120):
                async for frame in ws:
                    event = json.loads(frame)
                    kinds.append(event["type"])
                    finals += event.get("is_final") is True
    assert (ws.close_code, ws.close_reason) == (1008, "slow_consumer"), (finals, kinds[-3:])
    assert "done" not in kinds and finals < seconds / CHUNK  # what the buffers held
    assert unread(short_grace) == before + 1


async def test_a_grpc_client_that_reads_after_the_grace_ends_resource_exhausted(
    short_grace: ServerProcess,
) -> None:
    seconds = 400
    before, streams = unread(short_grace), streams_ended(short_grace)
    config = start_to_config({"format": FORMAT})
    data = audio(seconds)
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(short_grace.grpc_target, options=options) as channel:
        call = pb_grpc.StreamerStub(channel).Simple()
        await send_all(call, config, data)
        await after_the_stream_ends(short_grace, streams)
        kinds = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(120):
                async for event in call:
                    kinds.append(event.WhichOneof("event"))
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "done" not in kinds
    assert unread(short_grace) == before + 1
