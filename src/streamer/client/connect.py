"""One entry point for both transports, chosen by the URL's scheme.

``ws://HOST:PORT/api/v1/ROUTE`` (or ``wss://``) is a WebSocket route;
``grpc://HOST:PORT/ROUTE`` a gRPC call (``route=`` names it instead of the path; the
default is ``simple``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from streamer.client.audio import LoadedAudio, load_audio
from streamer.client.files import EventHandler, FileOptions, StreamResult
from streamer.client.stream import Opening, Stream, build_start

ROUTES = ("simple", "segmented")


def grpc_target(url: str, route: str | None = None) -> tuple[str, str]:
    """``(HOST:PORT, route)`` for a ``grpc://`` URL: ``route``, else the path's last part,
    else ``simple``; ``ValueError`` for a route the server does not have."""
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ValueError(f"a gRPC URL needs a host and port: {url!r}")
    named = parsed.path.strip("/").rsplit("/", 1)[-1]
    chosen = route or named or "simple"
    if chosen not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {chosen!r}")
    return parsed.netloc, chosen


def _scheme(url: str, route: str | None) -> str:
    scheme = urlparse(url).scheme
    if scheme in ("ws", "wss"):
        if route is not None:
            raise ValueError("a WebSocket URL names its route in its path; route= is for gRPC")
        return "ws"
    if scheme == "grpc":
        return "grpc"
    raise ValueError(f"the URL must start with ws://, wss:// or grpc://, got {url!r}")


def connect(
    url: str,
    *,
    format: Mapping[str, Any],
    interim_results: bool = False,
    interim_interval: float | None = None,
    vad: Mapping[str, Any] | None = None,
    trace_id: str | None = None,
    route: str | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    extra_start: Mapping[str, Any] | None = None,
    open_timeout: float = 10.0,
    api_key: str | None = None,
) -> Opening:
    """Open one stream: connect, send the start, wait for ``ready``.

    ``async with connect(url, format=audio.format) as stream:`` closes the stream on the way
    out; ``stream = await connect(...)`` leaves that to the caller (``stream.close()``).
    ``format`` is the start's audio format; ``metadata`` goes with a gRPC call; ``api_key``
    is sent as ``Authorization: Token <key>`` (a header, or gRPC metadata).
    ``open_timeout`` bounds the connection and the wait for ``ready``.

    Raises ``StreamFailed`` when the server cannot be reached or does not answer in time,
    and ``StreamRefused`` (a ``StreamFailed``, with the ``error`` event) when it refuses the
    start; ``ValueError`` for a URL or route it cannot use.
    """
    kind = _scheme(url, route)
    start = build_start(
        format,
        interim_results=interim_results,
        interim_interval=interim_interval,
        vad=vad,
        trace_id=trace_id,
        extra=extra_start,
    )
    if kind == "ws":
        from streamer.client.websocket import connect_websocket

        return Opening(
            lambda: connect_websocket(url, start, open_timeout=open_timeout, api_key=api_key)
        )
    from streamer.client.grpc import connect_grpc

    target, chosen = grpc_target(url, route)
    metadata = with_key(metadata, api_key)

    async def opener() -> Stream:
        return await connect_grpc(
            target, start, route=chosen, metadata=metadata, open_timeout=open_timeout
        )

    return Opening(opener)


async def stream_file(
    url: str,
    audio: LoadedAudio | str | os.PathLike[str],
    *,
    route: str | None = None,
    chunk_bytes: int | None = None,
    real_time: bool = False,
    interim: bool = False,
    trace_id: str | None = None,
    extra_start: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    results_timeout: float | None = 60.0,
    open_timeout: float = 10.0,
    api_key: str | None = None,
) -> StreamResult:
    """Stream a file (or audio already loaded) on a new connection and collect the result.

    ``chunk_bytes`` is the size of each message (default: 100 ms of audio); ``real_time``
    paces them as a live source would. A refused start is in the result (its ``error``
    event); ``StreamFailed`` when the server cannot be reached or does not answer within
    ``results_timeout`` after the audio; ``AudioFileError`` for a file that cannot be read.
    """
    kind = _scheme(url, route)
    if not isinstance(audio, LoadedAudio):
        audio = load_audio(audio)
    options = FileOptions(
        chunk_bytes=chunk_bytes,
        real_time=real_time,
        interim=interim,
        trace_id=trace_id,
        extra_start=extra_start,
        on_event=on_event,
        results_timeout=results_timeout,
        open_timeout=open_timeout,
    )
    if kind == "ws":
        from streamer.client import websocket

        return await websocket.stream_file(url, audio, options, api_key=api_key)
    from streamer.client import grpc

    target, chosen = grpc_target(url, route)
    metadata = with_key((), api_key)
    return await grpc.stream_file(target, audio, options, route=chosen, metadata=metadata)


def with_key(
    metadata: tuple[tuple[str, str], ...], api_key: str | None
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata with the key's ``authorization`` entry added, if there is a key."""
    return (*metadata, ("authorization", f"Token {api_key}")) if api_key else metadata
