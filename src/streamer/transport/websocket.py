"""The WebSocket shell: accept or deny, frames in and out through a codec, the close code.

Everything a connection decides is the connection machine's (``protocol/connection.py``),
run by the shared driver (``transport/driver.py``); this module only speaks ASGI.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from streamer.codecs import v1_json
from streamer.errors import ENDINGS, ClientError, ConnectionDenied
from streamer.events import Event
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.protocol.connection import WEBSOCKET, Disconnected, Input, Invalid
from streamer.services import Services
from streamer.transport.driver import ConnectionDriver
from streamer.transport.outbox import Outbox


def _no_opening() -> Input | None:
    return None


@dataclass(frozen=True, slots=True)
class WsCodec:
    """A front-end's WebSocket wire format: text and binary frames in, text frames out
    (``encode`` may give several frames, or none, for one event)."""

    decode_text: Callable[[str], Input]
    decode_bytes: Callable[[bytes], Input]
    encode: Callable[[Event], str | list[str]]
    opening: Callable[[], Input | None] = _no_opening
    """The input a connection begins with, before the client says anything (a session
    that opens its stream at once)."""
    subprotocol: str | None = None
    """The subprotocol this front-end speaks, accepted when the client offers it."""


V1_JSON = WsCodec(v1_json.decode_text, v1_json.decode_bytes, v1_json.encode_event)


def connection_request(ws: WebSocket, route: str) -> ConnectionRequest:
    """What the client offered in its upgrade request."""
    return ConnectionRequest(
        route=route,
        transport="websocket",
        headers={k.lower(): v for k, v in ws.headers.items()},
        query=dict(ws.query_params),
        subprotocols=tuple(ws.scope.get("subprotocols") or ()),
        client=ws.client.host if ws.client else None,
        url=str(ws.url),
    )


async def deny(ws: WebSocket, denied: ConnectionDenied) -> None:
    """Refuse the upgrade with HTTP 401/403 and a JSON body naming the code."""
    body = {"type": "error", "code": str(denied.code), "message": denied.message}
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=denied.status))
    except RuntimeError:  # a server without the denial extension answers 403 itself
        await ws.close()


async def serve_websocket(
    ws: WebSocket,
    route: Route,
    services: Services,
    codec: WsCodec | Callable[[], WsCodec] = V1_JSON,
    *,
    name: str | None = None,
) -> None:
    """Serve one WebSocket connection on ``route``; ``codec`` may be a factory of one
    codec a connection (a protocol with per-connection state). ``name`` is the route the
    policy sees, where it is not ``route``'s."""
    request = connection_request(ws, name or route.value)
    try:
        principal = services.authorize(request)
    except ConnectionDenied as denied:
        await deny(ws, denied)
        return
    if not isinstance(codec, WsCodec):
        codec = codec()
    subprotocol = principal.subprotocol
    if subprotocol is None and codec.subprotocol in request.subprotocols:
        subprotocol = codec.subprotocol
    await ws.accept(subprotocol=subprotocol)
    trace = services.open_connection(route, ws.headers)
    outbox: Outbox[str | list[str]] = Outbox(
        services.settings.server.max_pending_events,
        codec.encode,
        functools.partial(services.event_sent, route),
        "ws",
    )

    async def write(frames: str | list[str]) -> None:
        for frame in [frames] if isinstance(frames, str) else frames:
            await ws.send_text(frame)

    outbox.start(write)
    first = codec.opening()

    async def receive() -> Input | None:
        nonlocal first
        if first is not None:
            opening, first = first, None
            return opening
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return Disconnected()
        try:
            if (data := message.get("bytes")) is not None:
                return codec.decode_bytes(data)
            if (text := message.get("text")) is not None:
                return codec.decode_text(text)
        except ClientError as error:
            return Invalid(error)
        return None

    driver = ConnectionDriver(
        services,
        route,
        WEBSOCKET,
        receive,
        outbox,
        principal=principal,
        trace=trace,
    )
    close = await driver.run()
    code = int(ENDINGS[close.code].close_code)
    trace.end(code if close.send else 0)
    await outbox.close()
    if close.send:
        with contextlib.suppress(Exception):
            await ws.close(code, str(close.code or ""))
