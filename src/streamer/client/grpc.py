"""The client over gRPC (``streamer.v1.Streamer``): one call is one stream.

Events come back as the WebSocket carries them (``codecs.v1_proto.event_to_dict``) and then as
typed events, so a caller sees the same on both transports. A call that ends in error (a
refused config, an overloaded or draining server) gives the ``error`` event the WebSocket
would have sent; the status is the stream's ``close_code`` (its number) and
``close_reason`` (its name and details).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc

from streamer.client.audio import LoadedAudio
from streamer.client.errors import StreamClosed, StreamFailed
from streamer.client.files import DEFAULTS, FileOptions, StreamResult, play
from streamer.client.stream import Request, Stream
from streamer.client.websocket import MAX_MESSAGE_BYTES
from streamer.codecs.v1_proto import event_to_dict, start_to_config
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc

ROUTES = ("simple", "segmented")
ERROR_CODE_KEY = "streamer-error-code"
"""Trailing metadata with the protocol's error code (``streamer.transport.grpc``)."""
CLOSE_TIMEOUT = 10.0
"""How long to wait for the call's status once it is ending (after done or a refusal)."""
Metadata = tuple[tuple[str, str], ...]


class GrpcWire:
    """One call's messages (see ``client.stream.Wire``); closing it closes ``channel`` too
    when given (a channel opened for this stream alone)."""

    def __init__(self, call: Any, *, channel: grpc.aio.Channel | None = None) -> None:
        self._call = call
        self._channel = channel
        self._ended = False
        self._ready = False
        self._done = False
        self._refused = False
        self._told: set[str] = set()
        self._close_code: int | None = None
        self._close_reason = ""

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    async def _write(self, request: pb.StreamRequest) -> None:
        try:
            await self._call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            raise StreamClosed("the call is over") from None

    async def send_start(self, start: Mapping[str, Any]) -> None:
        # ValueError for a field the config cannot carry: the caller's mistake.
        await self._write(pb.StreamRequest(config=start_to_config(start)))

    async def send_audio(self, data: bytes | bytearray | memoryview) -> None:
        await self._write(pb.StreamRequest(audio=bytes(data)))

    async def send_request(self, request: Request, *, disconnect: bool = False) -> None:
        if request == "finalize":
            await self._write(pb.StreamRequest(finalize=pb.Finalize()))
        elif request == "keepalive":
            await self._write(pb.StreamRequest(keepalive=pb.Keepalive()))
        else:
            await self._write(pb.StreamRequest(stop=pb.Stop()))
            try:
                await self._call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                raise StreamClosed("the call is over") from None

    async def receive(self) -> dict[str, Any] | None:
        while not self._ended:
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as error:
                # The status as it arrived, before any later write can mask it.
                return self._end(error.code(), error.details(), error.trailing_metadata())
            if message is grpc.aio.EOF:
                code, details = await self._call.code(), await self._call.details()
                return self._end(code, details, await self._call.trailing_metadata())
            event = event_to_dict(message)
            if event is None:
                continue  # an event this client does not know
            kind = event["type"]
            if kind == "ready":
                self._ready = True
            elif kind == "done":
                self._done = True
            elif kind == "error":
                self._told.add(str(event.get("code")))
                self._refused = self._refused or not self._ready
            return event
        return None

    def _end(
        self, code: grpc.StatusCode, details: str | None, trailing: Any
    ) -> dict[str, Any] | None:
        self._ended = True
        details = details or ""
        self._close_code = int(code.value[0])
        self._close_reason = f"{code.name}: {details}" if details else code.name
        error_code = dict(trailing or ()).get(ERROR_CODE_KEY)
        if error_code is None or self._done or error_code in self._told:
            return None
        # The server tells the error in-band first; this covers an event that was lost.
        return {"type": "error", "code": str(error_code), "message": details}

    async def close(self) -> None:
        try:
            if not self._ended and (self._done or self._refused):
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        while await self.receive() is not None:
                            pass
                except TimeoutError:
                    pass
            if not self._ended:
                self._call.cancel()
                code = await self._call.code()
                self._end(code, await self._call.details(), None)
        finally:
            if self._channel is not None:
                await self._channel.close()


def open_channel(target: str) -> grpc.aio.Channel:
    """A channel as the client opens it (``HOST:PORT``): room for any event."""
    return grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    )


async def wait_connected(channel: grpc.aio.Channel, target: str, within: float) -> None:
    """Wait until the channel is ready; ``StreamFailed`` at its first failed attempt, as a
    socket would fail, or after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    raise StreamFailed(f"cannot connect to {target}: connection failed")
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        raise StreamFailed(f"cannot connect to {target}: no answer in {within} s") from None


async def open_stream(
    channel: grpc.aio.Channel,
    start: Mapping[str, Any],
    *,
    route: str = "simple",
    metadata: Metadata = (),
    ready_timeout: float | None = 10.0,
    owned: bool = False,
) -> Stream:
    """Start a stream (one call) on an open channel and wait for ``ready``.

    ``start`` holds the fields of the WebSocket ``start`` request
    (``client.stream.build_start``); ``ValueError`` for one the config cannot carry or an
    unknown ``route``. With ``owned``, closing the stream closes the channel.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    start_to_config(start)  # refuse what the config cannot carry before a call is made
    stub = pb_grpc.StreamerStub(channel)
    method = stub.Simple if route == "simple" else stub.Segmented
    call = method(metadata=metadata or None)
    wire = GrpcWire(call, channel=channel if owned else None)
    return await Stream.open(wire, start, ready_timeout=ready_timeout)


async def connect_grpc(
    target: str,
    start: Mapping[str, Any],
    *,
    route: str = "simple",
    metadata: Metadata = (),
    open_timeout: float = 10.0,
) -> Stream:
    """One stream on a new channel to ``target`` (``HOST:PORT``)."""
    channel = open_channel(target)
    try:
        await wait_connected(channel, target, open_timeout)
        return await open_stream(
            channel, start, route=route, metadata=metadata, ready_timeout=open_timeout, owned=True
        )
    except BaseException:
        await channel.close()
        raise


async def run_stream(
    channel: grpc.aio.Channel,
    audio: LoadedAudio,
    options: FileOptions = DEFAULTS,
    *,
    route: str = "simple",
    metadata: Metadata = (),
) -> StreamResult:
    """One stream, one call on an open channel: config, audio, ``stop``, then its events.

    Returns when the call ends; ``StreamFailed`` when it outlasts
    ``options.results_timeout`` after the audio is sent (the call is then cancelled).
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    start = options.start(audio)
    return await play(
        lambda: open_stream(
            channel, start, route=route, metadata=metadata, ready_timeout=options.open_timeout
        ),
        audio,
        options,
    )


async def stream_file(
    target: str,
    audio: LoadedAudio,
    options: FileOptions = DEFAULTS,
    *,
    route: str = "simple",
    metadata: Metadata = (),
) -> StreamResult:
    """One stream on a new channel to ``target`` (``HOST:PORT``); see :func:`run_stream`.

    Raises ``StreamFailed`` when the server cannot be reached within
    ``options.open_timeout``.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with open_channel(target) as channel:
        await wait_connected(channel, target, options.open_timeout)
        connected = loop.time() - began
        result = await run_stream(channel, audio, options, route=route, metadata=metadata)
    result.connect_seconds = connected
    return result
