"""The WebSocket shell of a call's subscribers: accept or deny (the shared connection
policy), then send the call's events as text frames until the call ends (1000), the
subscriber falls behind (``slow_consumer``, 1008), the call bus is lost (``bus_unavailable``,
1011) or the subscriber leaves. The upgrade's answer names the process that serves it
(``x-streamer-pid``)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from starlette.websockets import WebSocket

from streamer.errors import ENDINGS, ConnectionDenied, ErrorCode
from streamer.services import Services
from streamer.transport.websocket import connection_request, deny
from streamer.twilio.bus import BusLost, CallBus
from streamer.twilio.hub import HubFull

PID_HEADER = "x-streamer-pid"
"""The header of a WebSocket upgrade's answer that names the process serving it."""


def pid_header() -> list[tuple[bytes, bytes]]:
    return [(PID_HEADER.encode(), str(os.getpid()).encode())]


async def serve_subscriber(
    ws: WebSocket, services: Services, bus: CallBus, key: str, *, name: str
) -> None:
    """Serve one subscriber of topic ``key``; ``name`` is the route the policy sees."""
    try:
        services.authorize(connection_request(ws, name))
    except ConnectionDenied as denied:
        await deny(ws, denied)
        return
    # Subscribed before the upgrade is answered: a call started once the subscriber is
    # connected is never missed.
    try:
        subscription = await bus.subscribe(key)
    except (HubFull, BusLost) as refused:
        code = ErrorCode.OVERLOADED if isinstance(refused, HubFull) else ErrorCode.BUS_UNAVAILABLE
        reason = str(refused) if isinstance(refused, HubFull) else str(code)
        await ws.accept(headers=pid_header())
        await ws.close(int(ENDINGS[code].close_code), reason[:120])
        return

    async def until_gone() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass  # a subscriber has nothing to say

    gone: asyncio.Future[None] | None = None
    try:
        await ws.accept(headers=pid_header())
        gone = asyncio.ensure_future(until_gone())
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
        if subscription.failed:
            ending = ErrorCode.BUS_UNAVAILABLE
        with contextlib.suppress(Exception):
            await ws.close(int(ENDINGS[ending].close_code), str(ending or ""))
    finally:
        bus.hub.unsubscribe(subscription)
        if gone is not None:
            gone.cancel()
