"""The ``/v1/listen`` shell: Deepgram's live API as a per-connection codec for the
WebSocket shell. Everything it decides is the connection machine's; everything it says is
``codecs.deepgram``'s."""

from __future__ import annotations

from starlette.websockets import WebSocket

from streamer.codecs import deepgram
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.services import Services
from streamer.transport.websocket import WsCodec, serve_websocket

ROUTE = Route.SEGMENTED
"""The pipeline a ``/v1/listen`` stream runs: VAD segmentation, as Deepgram endpoints."""


def listen_codec(request: ConnectionRequest) -> WsCodec:
    """The codec of one connection, from its query; raises ``BadHandshake`` (HTTP 400)."""
    codec = deepgram.codec_for(request.all_query_items())
    return WsCodec(
        codec.decode_text,
        codec.decode_bytes,
        codec.encode,
        opening=codec.opening,
        close_code=deepgram.close_code,
        mark_finalize=True,
    )


async def serve_listen(ws: WebSocket, services: Services) -> None:
    """Serve one ``GET /v1/listen`` WebSocket connection."""
    await serve_websocket(ws, ROUTE, services, listen_codec)
