"""The client over WebSocket: protocol v1 as JSON text and binary audio frames.

:func:`connect_websocket` opens a connection for one stream; :func:`open_connection` and
:func:`open_stream` run streams one after another on a connection of one's own, and
:func:`run_stream` / :func:`stream_file` send a whole file and collect a ``StreamResult``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from streamer.client.audio import LoadedAudio
from streamer.client.errors import StreamClosed, StreamFailed
from streamer.client.files import DEFAULTS, FileOptions, StreamResult, play
from streamer.client.stream import Request, Stream

MAX_MESSAGE_BYTES = 1 << 24
"""Largest event the client accepts; events are small, this only guards against garbage."""
CLOSE_TIMEOUT = 10.0
"""How long to wait for the server's close after ``stop`` with ``disconnect``."""
CLOSING_ERRORS = frozenset(("overloaded", "shutting_down", "internal_error"))
"""Error codes after which the server closes the connection (``docs/protocol.md``)."""


class WebSocketWire:
    """One stream's messages on a WebSocket connection (see ``client.stream.Wire``).

    ``owned``: the connection is the stream's, and closing the stream closes it.
    """

    def __init__(self, ws: ClientConnection, *, owned: bool) -> None:
        self._ws = ws
        self._owned = owned
        self._disconnect = False
        self._server_closes = False

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def close_reason(self) -> str:
        return self._ws.close_reason or ""

    async def _send(self, message: str | bytes | bytearray | memoryview) -> None:
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            raise StreamClosed(f"the connection is closed ({self._ws.close_code})") from None

    async def send_start(self, start: Mapping[str, Any]) -> None:
        await self._send(json.dumps({"request": "start", **start}))

    async def send_audio(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(data)

    async def send_request(self, request: Request, *, disconnect: bool = False) -> None:
        body: dict[str, Any] = {"request": request}
        if request == "stop":
            body["disconnect"] = disconnect
            self._disconnect = disconnect
        await self._send(json.dumps(body))

    async def receive(self) -> dict[str, Any] | None:
        while True:
            try:
                message = await self._ws.recv()
            except ConnectionClosed:
                return None
            if not isinstance(message, str):
                continue  # the protocol has no binary events; ignore, as unknown events
            try:
                event = json.loads(message)
            except ValueError:
                raise StreamFailed(
                    f"the server sent a message that is not JSON: {message[:80]!r}"
                ) from None
            if not isinstance(event, dict):
                raise StreamFailed(
                    f"the server sent a message that is not an object: {message[:80]!r}"
                )
            kind = event.get("type")
            if (kind == "done" and self._disconnect) or (
                kind == "error" and event.get("code") in CLOSING_ERRORS
            ):
                self._server_closes = True
            return event

    async def close(self) -> None:
        if self._server_closes:
            # The server closes (after done, or an error that ends the connection): wait
            # for its close, so that its close code is the one known.
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._ws.wait_closed()
            except TimeoutError:
                pass
        if self._owned:
            await self._ws.close()


async def open_connection(
    url: str, *, open_timeout: float = 10.0, api_key: str | None = None
) -> ClientConnection:
    """Connect as the client does: no compression, room for any event; ``api_key`` goes in
    the ``Authorization`` header.

    ``StreamFailed`` when the connection cannot be opened (a refused key among the causes).
    """
    headers = {"Authorization": f"Token {api_key}"} if api_key else None
    try:
        return await connect(
            url,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            open_timeout=open_timeout,
            additional_headers=headers,
        )
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as error:
        detail = str(error) or type(error).__name__
        raise StreamFailed(f"cannot connect to {url}: {detail}") from None


async def open_stream(
    ws: ClientConnection,
    start: Mapping[str, Any],
    *,
    owned: bool = False,
    ready_timeout: float | None = 10.0,
) -> Stream:
    """Start a stream on an open connection and wait for ``ready`` (see ``Stream.open``).

    ``start`` holds the fields of the ``start`` request (``client.stream.build_start``).
    With ``owned``, closing the stream closes the connection.
    """
    return await Stream.open(WebSocketWire(ws, owned=owned), start, ready_timeout=ready_timeout)


async def connect_websocket(
    url: str, start: Mapping[str, Any], *, open_timeout: float = 10.0, api_key: str | None = None
) -> Stream:
    """One stream on a new connection to ``url`` (a route, ``ws://host:8080/api/v1/simple``)."""
    ws = await open_connection(url, open_timeout=open_timeout, api_key=api_key)
    return await open_stream(ws, start, owned=True, ready_timeout=open_timeout)


async def run_stream(
    ws: ClientConnection,
    audio: LoadedAudio,
    options: FileOptions = DEFAULTS,
    *,
    disconnect: bool = False,
) -> StreamResult:
    """One stream on an open connection: ``start``, the audio, ``stop``, then its events.

    Returns at ``done`` (or, with ``disconnect``, once the server has closed the
    connection), or as soon as the server refuses the ``start`` (its ``error`` is then the
    result's only event). ``StreamFailed`` when ``options.results_timeout`` runs out after
    the audio is sent.
    """
    start = options.start(audio)
    return await play(
        lambda: open_stream(ws, start, ready_timeout=options.open_timeout),
        audio,
        options,
        disconnect=disconnect,
    )


async def stream_file(
    url: str,
    audio: LoadedAudio,
    options: FileOptions = DEFAULTS,
    *,
    api_key: str | None = None,
) -> StreamResult:
    """One stream on a new connection, ending with ``stop`` and ``disconnect: true``.

    Raises ``StreamFailed`` when the connection cannot be opened or the server does not
    answer within ``options.results_timeout``.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    ws = await open_connection(url, open_timeout=options.open_timeout, api_key=api_key)
    connected = loop.time() - began
    start = options.start(audio)
    result = await play(
        lambda: open_stream(ws, start, owned=True, ready_timeout=options.open_timeout),
        audio,
        options,
        disconnect=True,
    )
    result.connect_seconds = connected
    return result
