"""The client's stream against a scripted wire: what it sends, what it yields, when it ends.

The wire is a fake (a real ``Wire``): it records what the stream sends and answers with
the v1 JSON objects a test lists. Connection failures use real, refused sockets.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from typing import Any

import pytest

from streamer.client import (
    Done,
    LoadedAudio,
    Ready,
    SegmentResult,
    SpeechStarted,
    Stream,
    StreamClosed,
    StreamError,
    StreamFailed,
    StreamRefused,
    connect,
    stream_file,
)
from streamer.client.files import FileOptions, play
from streamer.client.stream import Request

FORMAT = {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False}
READY = {
    "type": "ready",
    "session_id": "s1",
    "route": "segmented",
    "model": "test",
    "model_sample_rate": 16000,
    "channels": 1,
}
SEGMENT = {
    "type": "segment",
    "channel": 0,
    "start_time": 0.0,
    "end_time": 1.0,
    "is_final": True,
    "count": 16000,
}
DONE = {"type": "done", "audio_seconds": 1.0}


class ScriptedWire:
    """Answers with ``replies`` in order (None: the connection ends); records what it got.

    With ``hold``, ``receive`` waits after the replies run out, as a silent server does;
    with ``done_at_stop``, ``done`` comes only once ``stop`` was sent, as a server's does.
    """

    def __init__(
        self,
        replies: list[dict[str, Any] | None],
        *,
        hold: bool = False,
        done_at_stop: bool = False,
    ) -> None:
        self.replies = list(replies)
        self.hold = hold
        self.done_at_stop = done_at_stop
        self.stopped = asyncio.Event()
        self.sent: list[Any] = []
        self.closed = False
        self.ended = False

    @property
    def close_code(self) -> int | None:
        return 1000 if self.ended or self.closed else None

    @property
    def close_reason(self) -> str:
        return ""

    async def send_start(self, start: Mapping[str, Any]) -> None:
        self.sent.append(("start", dict(start)))

    async def send_audio(self, data: bytes | bytearray | memoryview) -> None:
        await asyncio.sleep(0)  # a write lets the reader run, as a socket's does
        if self.ended:
            raise StreamClosed("the connection is closed")
        self.sent.append(bytes(data))

    async def send_request(self, request: Request, *, disconnect: bool = False) -> None:
        if self.ended:
            raise StreamClosed("the connection is closed")
        self.sent.append((request, disconnect))
        if request == "stop":
            self.stopped.set()

    async def receive(self) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        if not self.replies:
            if self.hold:
                await asyncio.Event().wait()
            self.ended = True
            return None
        if self.done_at_stop and self.replies[0] == DONE:
            await self.stopped.wait()
        reply = self.replies.pop(0)
        if reply is None:
            self.ended = True
        return reply

    async def close(self) -> None:
        self.closed = True


async def open_scripted(
    replies: list[dict[str, Any] | None], **start: Any
) -> tuple[Stream, ScriptedWire]:
    wire = ScriptedWire(replies)
    stream = await Stream.open(wire, {"format": FORMAT, **start})
    return stream, wire


async def test_open_sends_the_start_and_returns_at_ready() -> None:
    stream, wire = await open_scripted([READY, DONE], interim_results=True)
    assert wire.sent == [("start", {"format": FORMAT, "interim_results": True})]
    assert stream.ready == Ready("s1", "segmented", "test", 16000, 1)
    assert stream.ready_message == READY
    assert stream.session_id == "s1"


async def test_events_are_typed_and_iteration_ends_at_done() -> None:
    active = {"type": "active", "channel": 0, "time": 0.0}
    future = {"type": "hologram", "x": 1}  # a type this client does not know: skipped
    stream, wire = await open_scripted([READY, active, future, SEGMENT, DONE, SEGMENT])
    events = [event async for event in stream]
    assert events == [
        SpeechStarted(channel=0, time=0.0),
        SegmentResult(channel=0, start=0.0, end=1.0, final=True, output={"count": 16000}),
        Done(audio_seconds=1.0),
    ]
    assert stream.done == Done(1.0)
    assert wire.replies == [SEGMENT]  # nothing is read after done
    assert [event async for event in stream] == []


async def test_iteration_ends_when_the_connection_ends_before_done() -> None:
    stream, _ = await open_scripted([READY, SEGMENT, None])
    assert [type(e) for e in [event async for event in stream]] == [SegmentResult]
    assert stream.done is None
    assert stream.close_code == 1000


async def test_interim_results_are_segments_that_are_not_final() -> None:
    interim = {**SEGMENT, "is_final": False, "end_time": 0.5, "count": 8000}
    stream, _ = await open_scripted([READY, interim, SEGMENT, DONE], interim_results=True)
    segments = [e async for e in stream if isinstance(e, SegmentResult)]
    assert [(s.end, s.final) for s in segments] == [(0.5, False), (1.0, True)]


async def test_audio_finalize_and_stop_are_sent_in_order() -> None:
    stream, wire = await open_scripted([READY, DONE])
    await stream.send(b"\x00\x01" * 4)
    await stream.finalize()
    await stream.keepalive()
    await stream.send(memoryview(b"\x02\x03"))
    await stream.stop()
    assert wire.sent[1:] == [
        b"\x00\x01" * 4,
        ("finalize", False),
        ("keepalive", False),
        b"\x02\x03",
        ("stop", True),
    ]
    with pytest.raises(StreamClosed, match="stopped"):
        await stream.send(b"\x00\x00")
    with pytest.raises(StreamClosed):
        await stream.finalize()


async def test_a_refused_start_raises_with_the_error_and_closes_the_wire() -> None:
    refusal = {"type": "error", "code": "overloaded", "message": "at its limit"}
    wire = ScriptedWire([refusal])
    with pytest.raises(StreamRefused, match="overloaded") as caught:
        await Stream.open(wire, {"format": FORMAT})
    assert caught.value.error == StreamError(code="overloaded", message="at its limit")
    assert caught.value.message == refusal
    assert isinstance(caught.value, StreamFailed)
    assert wire.closed


async def test_a_connection_that_ends_before_ready_is_refused_without_an_error() -> None:
    wire = ScriptedWire([None])
    with pytest.raises(StreamRefused, match="before it was ready") as caught:
        await Stream.open(wire, {"format": FORMAT})
    assert caught.value.error is None
    assert caught.value.close_code == 1000
    assert wire.closed


async def test_no_ready_in_time_fails() -> None:
    wire = ScriptedWire([], hold=True)
    with pytest.raises(StreamFailed, match=r"no ready from the server within 0\.05 s"):
        await Stream.open(wire, {"format": FORMAT}, ready_timeout=0.05)
    assert wire.closed


async def test_a_malformed_event_fails_the_stream() -> None:
    stream, _ = await open_scripted([READY, {"type": "segment", "channel": 0}])
    with pytest.raises(StreamFailed, match="malformed"):
        await anext(aiter(stream))


async def test_an_event_before_ready_fails() -> None:
    wire = ScriptedWire([SEGMENT])
    with pytest.raises(StreamFailed, match="segment before ready"):
        await Stream.open(wire, {"format": FORMAT})
    assert wire.closed


# The file helper over the same wire.

AUDIO = LoadedAudio(data=b"\x01\x00" * 3200, format=FORMAT, frames=3200)


async def test_play_sends_the_audio_in_chunks_and_records_every_event() -> None:
    wire = ScriptedWire([READY, SEGMENT, DONE], done_at_stop=True)
    seen: list[dict[str, Any]] = []

    async def opener() -> Stream:
        return await Stream.open(wire, {"format": FORMAT})

    result = await play(opener, AUDIO, FileOptions(chunk_bytes=1000, on_event=seen.append))
    assert result.events == seen == [READY, SEGMENT, DONE]
    assert len(result.arrivals) == 3
    assert result.ok and result.done == DONE
    assert result.typed_events[-1] == Done(1.0)
    audio = [m for m in wire.sent if isinstance(m, bytes)]
    assert b"".join(audio) == AUDIO.data and {len(m) for m in audio[:-1]} == {1000}
    assert result.bytes_sent == len(AUDIO.data)
    assert wire.sent[-1] == ("stop", True)
    assert wire.closed


async def test_play_records_a_refused_start_as_its_only_event() -> None:
    refusal = {"type": "error", "code": "shutting_down", "message": "draining"}
    wire = ScriptedWire([refusal])

    async def opener() -> Stream:
        return await Stream.open(wire, {"format": FORMAT})

    result = await play(opener, AUDIO)
    assert result.events == [refusal]
    assert result.ready is None and not result.ok
    assert result.bytes_sent == 0
    assert result.close_code == 1000


async def test_play_stops_sending_once_the_connection_is_gone() -> None:
    wire = ScriptedWire([READY, None])

    async def opener() -> Stream:
        return await Stream.open(wire, {"format": FORMAT})

    result = await play(opener, AUDIO, FileOptions(chunk_bytes=2))
    assert result.events == [READY]
    assert result.bytes_sent < len(AUDIO.data)
    assert result.done is None


# Connecting: URLs, and servers that are not there.


def refused_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
async def test_connect_fails_with_stream_failed_when_nobody_listens(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{refused_port()}/api/v1/simple"
    if scheme == "grpc":
        url = f"grpc://127.0.0.1:{refused_port()}/simple"
    with pytest.raises(StreamFailed, match="cannot connect"):
        async with connect(url, format=FORMAT, open_timeout=5.0):
            pytest.fail("connected to nobody")


async def test_stream_file_fails_with_stream_failed_when_nobody_listens() -> None:
    with pytest.raises(StreamFailed, match="cannot connect"):
        await stream_file(f"ws://127.0.0.1:{refused_port()}/api/v1/simple", AUDIO)


@pytest.mark.parametrize(
    ("url", "route", "match"),
    [
        ("http://127.0.0.1:8080/api/v1/simple", None, "ws://, wss:// or grpc://"),
        ("ws://127.0.0.1:8080/api/v1/simple", "simple", "route= is for gRPC"),
        ("grpc://127.0.0.1:50051", "chunked", "route must be one of"),
        ("grpc:///simple", None, "host and port"),
    ],
)
def test_urls_the_client_cannot_use_are_value_errors(
    url: str, route: str | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        connect(url, format=FORMAT, route=route)
