"""The WebSocket shell: accept or deny, frames in and out through a codec, the close code.

Everything a connection decides is the connection machine's (``protocol/connection.py``),
run by the shared driver (``transport/driver.py``); this module only speaks ASGI.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from streamer.codecs import v1_json
from streamer.errors import ENDINGS, BadHandshake, ClientError, ConnectionDenied, ErrorCode
from streamer.events import Event
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.protocol.actions import CodecReply
from streamer.protocol.connection import WEBSOCKET, Mode
from streamer.protocol.inputs import Disconnected, Input, Invalid
from streamer.services import Services
from streamer.transport.driver import ConnectionDriver, unread_close
from streamer.transport.limits import BINARY_SINK, PEER_GONE
from streamer.transport.outbox import Outbox


@dataclass(frozen=True, slots=True)
class WsCodec:
    """A front-end's WebSocket wire format: text and binary frames in, text frames out.

    ``encode`` may give one frame, several, or none (an event the front-end does not
    show); ``encode_reply``, the frames of the codec's own replies, where it has them.
    ``opening``: inputs the connection starts with before any frame (a start request a
    front-end read from the query, a session that opens its stream at once).
    ``subprotocol``: the subprotocol this front-end speaks, accepted when the client offers
    it. ``close_code``: the front-end's own close codes, by the reason the connection ends
    (default ``errors.ENDINGS``). ``mark_finalize``: its streams tell which finals a
    finalize forced. ``mode``: how its connections differ (``WEBSOCKET_FINISHING``: a
    stream whose client goes away is finished, not withdrawn, for its results' other
    readers). ``timeout`` and ``timed_out``: a front-end's own limit on the client's
    silence (AssemblyAI's ``inactivity_timeout``): before each read, the seconds the client
    still has (None: no limit); once they pass with nothing read, ``timed_out`` gives the
    input the connection takes instead.
    """

    decode_text: Callable[[str], Input]
    decode_bytes: Callable[[bytes], Input]
    encode: Callable[[Event], str | Sequence[str]]
    opening: tuple[Input, ...] = ()
    subprotocol: str | None = None
    close_code: Callable[[ErrorCode | None], int] | None = None
    mark_finalize: bool = False
    mode: Mode = WEBSOCKET
    encode_reply: Callable[[CodecReply], str | Sequence[str]] | None = None
    timeout: Callable[[], float | None] | None = None
    timed_out: Callable[[], Input] | None = None


CodecFactory: TypeAlias = Callable[[ConnectionRequest], WsCodec]
"""A per-connection codec made from the upgrade request; raises ``BadHandshake`` (HTTP
400) when the request is malformed."""

V1_JSON = WsCodec(v1_json.decode_text, v1_json.decode_bytes, v1_json.encode_event)


def _frames(encoded: str | Sequence[str]) -> tuple[str, ...]:
    return (encoded,) if isinstance(encoded, str) else tuple(encoded)


def connection_request(ws: WebSocket, route: str) -> ConnectionRequest:
    """What the client offered in its upgrade request."""
    return ConnectionRequest(
        route=route,
        transport="websocket",
        headers={k.lower(): v for k, v in ws.headers.items()},
        query=dict(ws.query_params),
        query_items=tuple(ws.query_params.multi_items()),
        subprotocols=tuple(ws.scope.get("subprotocols") or ()),
        client=ws.client.host if ws.client else None,
        url=str(ws.url),
    )


async def deny(ws: WebSocket, denied: ConnectionDenied | BadHandshake) -> None:
    """Refuse the upgrade with HTTP 400/401/403 and a JSON body naming the code (or the
    front-end's own body)."""
    body: Mapping[str, Any] = {
        "type": "error",
        "code": str(denied.code),
        "message": denied.message,
    }
    if isinstance(denied, BadHandshake):
        body = denied.body or {**body, "parameter": denied.parameter}
    try:
        await ws.send_denial_response(JSONResponse(dict(body), status_code=denied.status))
    except RuntimeError:  # a server without the denial extension answers 403 itself
        await ws.close()


async def serve_websocket(
    ws: WebSocket,
    route: Route,
    services: Services,
    codec: WsCodec | CodecFactory = V1_JSON,
    *,
    name: str | None = None,
) -> None:
    """Serve one WebSocket connection on ``route``, with a codec or a codec per connection
    (made from the upgrade request). ``name`` is the route the policy sees, where it is not
    ``route``'s."""
    request = connection_request(ws, name or route.value)
    try:
        principal = services.authorize(request)
        if not isinstance(codec, WsCodec):
            codec = codec(request)
    except (ConnectionDenied, BadHandshake) as denied:
        await deny(ws, denied)
        return
    subprotocol = principal.subprotocol
    if subprotocol is None and codec.subprotocol in request.subprotocols:
        subprotocol = codec.subprotocol
    # The process that serves it, for an operator with several (x-streamer-pid).
    await ws.accept(
        subprotocol=subprotocol, headers=[(b"x-streamer-pid", str(os.getpid()).encode())]
    )
    trace = services.open_connection(route, ws.headers)
    encode, encode_reply = codec.encode, codec.encode_reply
    outbox: Outbox[tuple[str, ...]] = Outbox(
        services.max_pending_events,
        lambda event: _frames(encode(event)),
        functools.partial(services.event_sent, route),
        "ws",
        dropped=functools.partial(services.interim_dropped, route),
        grace=services.close_grace_seconds,
        encode_reply=None if encode_reply is None else lambda reply: _frames(encode_reply(reply)),
    )

    async def write(frames: tuple[str, ...]) -> None:
        for frame in frames:
            await ws.send_text(frame)

    outbox.start(write)
    opening = list(codec.opening)
    decode_text, decode_bytes = codec.decode_text, codec.decode_bytes
    timeout, timed_out = codec.timeout, codec.timed_out

    def read(decode: Callable[[Any], Input], payload: bytes | str) -> Input:
        """A message's input, read once (a codec may keep state of its own)."""
        try:
            return decode(payload)
        except ClientError as error:
            return Invalid(error)

    async def receive() -> Input | None:
        if opening:
            return opening.pop(0)
        wait = None if timeout is None else timeout()
        if wait is None or timed_out is None:
            message = await ws.receive()
        else:
            try:
                message = await asyncio.wait_for(ws.receive(), max(wait, 0.0))
            except TimeoutError:
                return timed_out()
        if message["type"] == "websocket.disconnect":
            return Disconnected()
        if (data := message.get("bytes")) is not None:
            return read(decode_bytes, data)
        if (text := message.get("text")) is not None:
            return read(decode_text, text)
        return None

    gone = ws.scope.get("extensions", {}).get(PEER_GONE, {}).get("future")
    driver = ConnectionDriver(
        services,
        route,
        codec.mode,
        receive,
        outbox,
        principal=principal,
        trace=trace,
        gone=gone,
        limits=services.limits,
        mark_finalize=codec.mark_finalize,
        interruptible=True,  # a cancelled receive leaves the next message queued
    )
    # Binary messages that come while the driver waits with nothing else to do go
    # straight to it from the protocol's callback, read there and only there (a codec
    # with a receive timeout keeps the queue: its timeout counts from the receive).
    attach = ws.scope.get("extensions", {}).get(BINARY_SINK, {}).get("attach")
    if attach is not None and timeout is None:

        def sink(data: bytes) -> bool:
            return not opening and driver.offer(functools.partial(read, decode_bytes, data))

        attach(sink)
    try:
        close = await driver.run()
    finally:
        if attach is not None:
            attach(None)
    if close.code is ErrorCode.SLOW_CONSUMER or not close.send:
        outbox.cancel()  # it reads nothing, or is gone: what is queued cannot be written
    elif await outbox.close():
        close = unread_close(services, route)
    if codec.close_code is not None:
        code = codec.close_code(close.code)
    else:
        code = int(ENDINGS[close.code].close_code)
    trace.end(code if close.send else 0)
    if close.send:
        with contextlib.suppress(Exception):
            await ws.close(code, str(close.code or ""))
