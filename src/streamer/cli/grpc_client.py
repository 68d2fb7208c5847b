"""``streamer client --grpc HOST:PORT``: the client's streaming API over gRPC.

:func:`stream_file` and :func:`run_stream` take the options of their WebSocket namesakes in
``streamer.cli.client`` and return the same ``StreamResult``, with the events as the
WebSocket would have carried them (dicts of its JSON). A call that ends in error (a refused
config, an overloaded or draining server) adds the ``error`` event the WebSocket would have
sent; the status is in ``close_code`` (its number) and ``close_reason`` (its name and details).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlparse

import grpc

from streamer.cli.client import (
    MAX_MESSAGE_BYTES,
    EventHandler,
    LoadedAudio,
    StreamFailed,
    StreamResult,
    send_audio,
)
from streamer.codecs.v1_proto import event_to_dict, start_to_config
from streamer.transport.proto import streamer_v1_pb2 as pb
from streamer.transport.proto import streamer_v1_pb2_grpc as pb_grpc

ROUTES = ("simple", "segmented")
ERROR_CODE_KEY = "streamer-error-code"
"""Trailing metadata with the protocol's error code (``streamer.transport.grpc``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gRPC options of ``streamer client``."""
    parser.add_argument(
        "--grpc", metavar="HOST:PORT", help="stream over gRPC to this server instead of --addr"
    )
    parser.add_argument(
        "--route",
        choices=ROUTES,
        help="the route with --grpc (default: the one --addr names, else simple)",
    )


def route_of(args: argparse.Namespace) -> str:
    """The route a gRPC stream takes: ``--route``, or the last part of ``--addr``'s path."""
    if args.route is not None:
        return str(args.route)
    name = urlparse(str(args.addr)).path.rstrip("/").rsplit("/", 1)[-1]
    return name if name in ROUTES else "simple"


def bind(args: argparse.Namespace) -> Callable[..., Coroutine[Any, Any, StreamResult]]:
    """:func:`stream_file` on the route ``args`` name, for ``streamer client --grpc``."""
    return functools.partial(stream_file, route=route_of(args))


async def _receive(
    call: Any,
    result: StreamResult,
    t0: float,
    on_event: EventHandler | None,
    ready: asyncio.Event,
) -> grpc.aio.AioRpcError | None:
    """Collect events until the call ends; returns its error, if it ended in one."""
    loop = asyncio.get_running_loop()
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            event = event_to_dict(message)
            if event is None:
                continue  # an event this client does not know
            now = loop.time() - t0
            result.events.append(event)
            result.arrivals.append(now)
            if event["type"] == "ready":
                result.ready_seconds = now
                ready.set()
            elif event["type"] == "done":
                result.done_seconds = now
            if on_event is not None:
                on_event(event)
    except grpc.aio.AioRpcError as error:
        return error  # the status as it arrived, before any later write can mask it
    return None


async def _send(
    call: Any,
    config: pb.StreamConfig,
    audio: LoadedAudio,
    chunk_bytes: int,
    real_time: bool,
    receiver: asyncio.Task[grpc.aio.AioRpcError | None],
    ready: asyncio.Event,
    result: StreamResult,
    t0: float,
) -> None:
    await call.write(pb.StreamRequest(config=config))
    # Audio follows the server's ready. A refused config then ends the call while nothing
    # is being written: grpc.aio reports INTERNAL instead of the server's status when a
    # write is under way as the call ends (grpc/grpc#36066).
    accepted = asyncio.ensure_future(ready.wait())
    await asyncio.wait({accepted, receiver}, return_when=asyncio.FIRST_COMPLETED)
    accepted.cancel()

    async def write(frame: memoryview) -> None:
        await call.write(pb.StreamRequest(audio=bytes(frame)))

    await send_audio(write, audio, chunk_bytes, real_time, receiver, result, t0)


async def run_stream(
    channel: grpc.aio.Channel,
    audio: LoadedAudio,
    *,
    route: str = "simple",
    chunk_bytes: int | None = None,
    real_time: bool = False,
    interim: bool = False,
    trace_id: str | None = None,
    extra_start: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    results_timeout: float | None = 60.0,
) -> StreamResult:
    """One stream, one call on an open channel: config, audio, ``stop``, then its events.

    Returns when the call ends; ``StreamFailed`` when it outlasts ``results_timeout`` after
    the audio is sent (the call is then cancelled).
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if chunk_bytes is None:
        chunk_bytes = audio.chunk_bytes()
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    start: dict[str, Any] = {"format": dict(audio.format), "interim_results": interim}
    if trace_id is not None:
        start["trace_id"] = trace_id
    start.update(extra_start or {})
    config = start_to_config(start)
    stub = pb_grpc.StreamerStub(channel)
    method = stub.Simple if route == "simple" else stub.Segmented
    loop = asyncio.get_running_loop()
    result = StreamResult()
    ready = asyncio.Event()
    t0 = loop.time()
    call = method(metadata=metadata or None)
    receiver = asyncio.create_task(_receive(call, result, t0, on_event, ready), name="grpc-receive")
    try:
        try:
            await _send(call, config, audio, chunk_bytes, real_time, receiver, ready, result, t0)
            if not receiver.done():
                await call.write(pb.StreamRequest(stop=pb.Stop()))
                result.stop_seconds = loop.time() - t0
                await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call is over; its status tells how
        try:
            error = await asyncio.wait_for(receiver, results_timeout)
        except TimeoutError:
            call.cancel()
            raise StreamFailed(f"no done from the server within {results_timeout} s") from None
    finally:
        receiver.cancel()
    trailing: Any = ()
    if error is None:
        code, details = await call.code(), await call.details()
    else:
        code, details, trailing = error.code(), error.details(), error.trailing_metadata()
    details = details or ""
    result.close_code = int(code.value[0])
    result.close_reason = f"{code.name}: {details}" if details else code.name
    error_code: str | None = dict(trailing or ()).get(ERROR_CODE_KEY)
    told = any(e.get("code") == error_code for e in result.errors)
    if error_code is not None and result.done is None and not told:
        # The server tells the error in-band first; this covers an event that was lost.
        event = {"type": "error", "code": error_code, "message": details}
        result.events.append(event)
        result.arrivals.append(loop.time() - t0)
        if on_event is not None:
            on_event(event)
    return result


def open_channel(target: str) -> grpc.aio.Channel:
    """A channel as the client opens it: room for any event."""
    return grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    )


async def _connect(channel: grpc.aio.Channel, target: str, within: float) -> None:
    """Wait until the channel is ready; fail at its first failed attempt, as a socket would."""
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


async def stream_file(
    target: str,
    audio: LoadedAudio,
    *,
    route: str = "simple",
    chunk_bytes: int | None = None,
    real_time: bool = False,
    interim: bool = False,
    trace_id: str | None = None,
    extra_start: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    results_timeout: float | None = 60.0,
    open_timeout: float = 10.0,
) -> StreamResult:
    """One stream on a new channel to ``target`` (``HOST:PORT``); see :func:`run_stream`.

    Raises ``StreamFailed`` when the server cannot be reached within ``open_timeout``.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with open_channel(target) as channel:
        await _connect(channel, target, open_timeout)
        connected = loop.time() - began
        result = await run_stream(
            channel,
            audio,
            route=route,
            chunk_bytes=chunk_bytes,
            real_time=real_time,
            interim=interim,
            trace_id=trace_id,
            extra_start=extra_start,
            on_event=on_event,
            metadata=metadata,
            results_timeout=results_timeout,
        )
    result.connect_seconds = connected
    return result
