"""The ``/v1/realtime`` shell: OpenAI Realtime transcription sessions as a per-connection
codec for the WebSocket shell. Everything it decides is the connection machine's;
everything it says is ``codecs.openai_realtime``'s."""

from __future__ import annotations

from starlette.websockets import WebSocket

from streamer.auth import REALTIME_SUBPROTOCOL
from streamer.codecs.openai_realtime import RealtimeCodec
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.services import Services
from streamer.transport.websocket import CodecFactory, WsCodec, serve_websocket

ROUTE = Route.SEGMENTED
"""The route a session's connection counts under; the session opens its streams on the
segmented route (server VAD) or the simple one (manual commits)."""


def session_codec(max_append_bytes: int) -> CodecFactory:
    """The codec of each connection; an append past ``max_append_bytes`` of audio is an
    error event."""

    def codec_for(request: ConnectionRequest) -> WsCodec:
        codec = RealtimeCodec(max_append_bytes=max_append_bytes)
        return WsCodec(
            codec.decode_text,
            codec.decode_bytes,
            codec.encode,
            opening=(codec.opening(),),
            subprotocol=REALTIME_SUBPROTOCOL,
            encode_reply=codec.encode,
        )

    return codec_for


async def serve_realtime(ws: WebSocket, services: Services, *, max_append_bytes: int) -> None:
    """Serve one ``GET /v1/realtime`` WebSocket connection."""
    await serve_websocket(ws, ROUTE, services, session_codec(max_append_bytes), name="realtime")
