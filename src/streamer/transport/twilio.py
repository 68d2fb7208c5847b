"""The ``/v1/twilio`` shell: a Twilio Media Streams call as a per-connection codec for the
WebSocket shell. The call's tracks are the channels of one segmented stream; its events
go to the call's sink (subscribers, callback), not back to Twilio. Everything it decides
is the connection machine's; everything it says is ``codecs.twilio_media``'s."""

from __future__ import annotations

from collections.abc import Callable

from starlette.websockets import WebSocket

from streamer.codecs.twilio_media import CallSink, MediaStreamCodec
from streamer.pipeline import Route
from streamer.protocol.connection import WEBSOCKET_FINISHING
from streamer.services import Services
from streamer.transport.websocket import WsCodec, serve_websocket

ROUTE = Route.SEGMENTED
"""The pipeline a call's stream runs."""


async def serve_media_stream(
    ws: WebSocket,
    services: Services,
    sink: CallSink,
    *,
    on_rejected: Callable[[str], None],
    max_skew_seconds: float,
) -> None:
    """Serve one ``GET /v1/twilio`` WebSocket connection: one call, its results to ``sink``;
    ``on_rejected`` counts each frame refused (by reason)."""
    codec = MediaStreamCodec(sink, on_rejected=on_rejected, max_skew_seconds=max_skew_seconds)
    # A call that drops without its stop still has its last finals, for its subscribers
    # and callback.
    wire = WsCodec(
        codec.decode_text,
        codec.decode_bytes,
        codec.encode,
        mode=WEBSOCKET_FINISHING,
        encode_reply=codec.encode,
    )
    try:
        await serve_websocket(ws, ROUTE, services, lambda request: wire, name="twilio")
    finally:
        codec.close()
