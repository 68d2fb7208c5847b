"""The WebSocket shell of a call's subscribers: accept or deny (the shared connection
policy), then send the call's events as text frames until the call ends (1000), the
subscriber falls behind (``slow_consumer``, 1008) or leaves."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket

from streamer.errors import ENDINGS, ConnectionDenied, ErrorCode
from streamer.services import Services
from streamer.transport.websocket import connection_request, deny
from streamer.twilio.hub import CallHub, HubFull


async def serve_subscriber(
    ws: WebSocket, services: Services, hub: CallHub, key: str, *, name: str
) -> None:
    """Serve one subscriber of topic ``key``; ``name`` is the route the policy sees."""
    try:
        services.authorize(connection_request(ws, name))
    except ConnectionDenied as denied:
        await deny(ws, denied)
        return
    await ws.accept()
    try:
        subscription = hub.subscribe(key)
    except HubFull as full:
        await ws.close(int(ENDINGS[ErrorCode.OVERLOADED].close_code), str(full)[:120])
        return

    async def until_gone() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass  # a subscriber has nothing to say

    gone = asyncio.ensure_future(until_gone())
    try:
        while True:
            nxt = asyncio.ensure_future(subscription.next())
            await asyncio.wait((nxt, gone), return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                return  # the subscriber left
            text = nxt.result()
            if text is None:
                break
            await ws.send_text(text)
        ending = ErrorCode.SLOW_CONSUMER if subscription.overflowed else None
        with contextlib.suppress(Exception):
            await ws.close(int(ENDINGS[ending].close_code), str(ending or ""))
    finally:
        hub.unsubscribe(subscription)
        gone.cancel()
