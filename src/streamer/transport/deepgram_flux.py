"""The ``/v2/listen`` shell: Deepgram Flux, the turn-taking live API, as a per-connection
codec for the WebSocket shell. Everything it decides is the connection machine's;
everything it says is ``codecs.deepgram_flux``'s."""

from __future__ import annotations

from starlette.websockets import WebSocket

from streamer.codecs import deepgram_flux
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.services import Services
from streamer.transport.websocket import WsCodec, serve_websocket

ROUTE = Route.SEGMENTED
"""The pipeline a ``/v2/listen`` stream runs: VAD segmentation with turn detection."""


def flux_codec(request: ConnectionRequest) -> WsCodec:
    """The codec of one connection, from its query; raises ``BadHandshake`` (HTTP 400)."""
    codec = deepgram_flux.codec_for(request.all_query_items())
    return WsCodec(
        codec.decode_text,
        codec.decode_bytes,
        codec.encode,
        encode_reply=codec.encode,
        opening=codec.opening,
        close_code=deepgram_flux.close_code,
    )


async def serve_flux(ws: WebSocket, services: Services) -> None:
    """Serve one ``GET /v2/listen`` WebSocket connection."""
    await serve_websocket(ws, ROUTE, services, flux_codec)
