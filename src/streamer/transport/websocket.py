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
from streamer.transport.limits import PEER_GONE
from streamer.transport.outbox import Outbox


@dataclass(frozen=True, slots=True)
class WsCodec:
    """A front-end's WebSocket wire format: text and binary frames in, text frames out."""

    decode_text: Callable[[str], Input]
    decode_bytes: Callable[[bytes], Input]
    encode: Callable[[Event], str]


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
    )


async def deny(ws: WebSocket, denied: ConnectionDenied) -> None:
    """Refuse the upgrade with HTTP 401/403 and a JSON body naming the code."""
    body = {"type": "error", "code": str(denied.code), "message": denied.message}
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=denied.status))
    except RuntimeError:  # a server without the denial extension answers 403 itself
        await ws.close()


async def serve_websocket(
    ws: WebSocket, route: Route, services: Services, codec: WsCodec = V1_JSON
) -> None:
    """Serve one WebSocket connection on ``route``."""
    try:
        principal = services.authorize(connection_request(ws, route.value))
    except ConnectionDenied as denied:
        await deny(ws, denied)
        return
    await ws.accept(subprotocol=principal.subprotocol)
    trace = services.open_connection(route, ws.headers)
    outbox: Outbox[str] = Outbox(
        services.settings.server.max_pending_events,
        codec.encode,
        functools.partial(services.event_sent, route),
        "ws",
        dropped=functools.partial(services.interim_dropped, route),
    )
    outbox.start(ws.send_text)

    async def receive() -> Input | None:
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

    gone = ws.scope.get("extensions", {}).get(PEER_GONE, {}).get("future")
    driver = ConnectionDriver(
        services,
        route,
        WEBSOCKET,
        receive,
        outbox,
        principal=principal,
        trace=trace,
        gone=gone,
    )
    close = await driver.run()
    code = int(ENDINGS[close.code].close_code)
    trace.end(code if close.send else 0)
    await outbox.close()
    if close.send:
        with contextlib.suppress(Exception):
            await ws.close(code, str(close.code or ""))
