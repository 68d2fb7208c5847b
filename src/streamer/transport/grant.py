"""``POST /api/v1/auth/grant``: a web app's backend trades its API key for a short-lived
token that the page it serves can connect with.

The request authenticates like a connection (the same policy: ``Authorization: Token
<key>``); a token cannot mint another token, so a leaked one dies with its TTL. The JSON
body is optional; every field in it too: ``ttl_seconds``, ``routes``, ``max_streams``,
``single_use``. The answer: ``{"token": ..., "expires_at": ...}`` (ISO 8601, UTC) and what
the token allows. No CORS headers are sent: pages on other sites cannot read a token.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from streamer.errors import ConnectionDenied, ErrorCode
from streamer.policy import ConnectionRequest, Principal
from streamer.services import Services
from streamer.tokens import TokenIssuer

GRANT_ROUTE = "grant"
"""The route name a grant request is authorized (and its refusals counted) under."""


class GrantRequest(BaseModel):
    """What a token should allow; every field is optional."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ttl_seconds: float | None = Field(default=None, gt=0)
    routes: list[str] | None = Field(default=None, min_length=1, max_length=16)
    max_streams: int | None = Field(default=None, ge=1)
    single_use: bool = False


class MintRefused(Exception):
    """A token request refused: the HTTP status, the error code and what was wrong."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def minting_principal(
    request: Request, route: str, issuer: TokenIssuer | None
) -> tuple[TokenIssuer, Principal]:
    """Authorize a token request under ``route`` like a connection: the issuer and the
    principal the key acts for. Raises ``MintRefused`` where the key is refused, the server
    mints no tokens, or the key is itself a token (a token cannot mint tokens)."""
    services: Services = request.app.state.services
    connection = ConnectionRequest(
        route=route,
        transport="http",
        headers={k.lower(): v for k, v in request.headers.items()},
        client=request.client.host if request.client else None,
    )
    try:
        principal = services.authorize(connection)
    except ConnectionDenied as denied:
        raise MintRefused(denied.status, str(denied.code), denied.message) from None
    if issuer is None:
        raise MintRefused(404, "not_found", "this server mints no tokens: set [auth] token_secret")
    if "token_id" in principal.claims:
        raise MintRefused(403, str(ErrorCode.FORBIDDEN), "a token cannot mint tokens")
    return issuer, principal


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "code": code, "message": message},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def grant_endpoint(
    issuer: TokenIssuer | None, routes: Collection[str]
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint minting tokens of ``issuer`` for the stream ``routes`` it names."""

    async def grant(request: Request) -> Response:
        try:
            minter, principal = minting_principal(request, GRANT_ROUTE, issuer)
        except MintRefused as refused:
            return _error(refused.status, refused.code, refused.message)
        body = await request.body()
        try:
            asked = GrantRequest.model_validate(json.loads(body) if body.strip() else {})
        except (ValueError, ValidationError) as error:
            return _error(400, str(ErrorCode.INVALID_MESSAGE), _describe(error))
        unknown = sorted(set(asked.routes or ()) - set(routes))
        if unknown:
            return _error(
                400,
                str(ErrorCode.INVALID_MESSAGE),
                f"unknown routes {unknown}: the routes are {sorted(routes)}",
            )
        try:
            minted = minter.mint(
                principal.name,
                ttl=asked.ttl_seconds,
                routes=asked.routes or (),
                max_streams=asked.max_streams,
                key_max_streams=principal.max_streams,
                single_use=asked.single_use,
            )
        except ValueError as error:
            return _error(400, str(ErrorCode.INVALID_MESSAGE), str(error))
        return JSONResponse(
            {
                "token": minted.token,
                "expires_at": datetime.fromtimestamp(minted.expires_at, UTC).isoformat(),
                "routes": list(minted.routes),
                "max_streams": minted.max_streams,
                "single_use": minted.single_use,
            },
            headers={"Cache-Control": "no-store"},
        )

    return grant


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"invalid field {where!r}: {first['msg']}"
    return "the body is not a JSON object"
