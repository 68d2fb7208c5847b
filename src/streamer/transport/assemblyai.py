"""AssemblyAI's Universal-Streaming v3 API: the ``/v3/ws`` shell and ``GET /v3/token``.

The shell is the WebSocket shell with a per-connection codec (``codecs.assemblyai``):
everything it decides is the connection machine's, everything it says is the codec's. The
token endpoint trades an API key (``Authorization: <key>``, no scheme, as AssemblyAI's
clients send it) for a single-use token that opens ``/v3/ws`` once, within
``expires_in_seconds``, on the server's token machinery (``streamer.tokens``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from streamer.codecs import assemblyai
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.services import Services
from streamer.tokens import TokenIssuer
from streamer.transport.grant import MintRefused, minting_principal
from streamer.transport.websocket import CodecFactory, WsCodec, serve_websocket

ROUTE = Route.SEGMENTED
"""The pipeline a ``/v3/ws`` stream runs: VAD segmentation, with turn detection."""
NAME = "assemblyai"
"""The route the policy sees (and a token's audience)."""
TOKEN_ROUTE = "assemblyai_token"
"""The route a token request is authorized (and its refusals counted) under."""
MAX_EXPIRES_IN_SECONDS = 600
"""AssemblyAI's longest ``expires_in_seconds``."""


@dataclass(frozen=True, slots=True)
class ChunkBounds:
    """The server's bounds on a ``/v3/ws`` session: one audio message's length (shorter or
    longer is 3007), and the session's life (``Begin.expires_at``; 0: three hours)."""

    min_chunk_ms: float = assemblyai.MIN_CHUNK_MS
    max_chunk_ms: float = assemblyai.MAX_CHUNK_MS
    max_session_seconds: float = 0.0


def streaming_codec(bounds: ChunkBounds = ChunkBounds()) -> CodecFactory:
    """The codec factory of ``/v3/ws``: one codec per connection, from its query."""

    def make(request: ConnectionRequest) -> WsCodec:
        codec = assemblyai.codec_for(
            request.all_query_items(),
            max_session_seconds=bounds.max_session_seconds,
            min_chunk_ms=bounds.min_chunk_ms,
            max_chunk_ms=bounds.max_chunk_ms,
        )
        return WsCodec(
            codec.decode_text,
            codec.decode_bytes,
            codec.encode,
            opening=codec.opening,
            close_code=codec.close_code,
            mode=assemblyai.MODE,
            timeout=codec.timeout,
            timed_out=codec.timed_out,
        )

    return make


async def serve_streaming(
    ws: WebSocket, services: Services, bounds: ChunkBounds = ChunkBounds()
) -> None:
    """Serve one ``GET /v3/ws`` WebSocket connection."""
    await serve_websocket(ws, ROUTE, services, streaming_codec(bounds), name=NAME)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=status, headers={"Cache-Control": "no-store"}
    )


def token_endpoint(issuer: TokenIssuer | None) -> Callable[[Request], Awaitable[Response]]:
    """``GET /v3/token?expires_in_seconds=N``: ``{"token": ...}``, single-use, for
    ``/v3/ws`` only."""

    async def token(request: Request) -> Response:
        try:
            minter, principal = minting_principal(request, TOKEN_ROUTE, issuer)
        except MintRefused as refused:
            return _error(refused.status, refused.message)
        raw = request.query_params.get("expires_in_seconds")
        try:
            expires = int(raw) if raw is not None else 0
        except ValueError:
            expires = 0
        if not 1 <= expires <= MAX_EXPIRES_IN_SECONDS:
            return _error(
                400, f"expires_in_seconds must be an integer from 1 to {MAX_EXPIRES_IN_SECONDS}"
            )
        try:
            minted = minter.mint(
                principal.name,
                ttl=float(expires),
                routes=(NAME,),
                key_max_streams=principal.max_streams,
                single_use=True,
            )
        except ValueError as error:
            return _error(400, f"expires_in_seconds: {error}")
        return JSONResponse(
            {"token": minted.token, "expires_in_seconds": expires},
            headers={"Cache-Control": "no-store"},
        )

    return token
