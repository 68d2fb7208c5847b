"""The connection policy: who may connect, asked once per connection before any stream.

The composition root passes one policy to every transport. It sees what the client sent
with its handshake (the route, the headers or gRPC metadata, the query, the offered
subprotocols) and returns the ``Principal`` the connection acts for, or raises
``ConnectionDenied``: a WebSocket then gets HTTP 401/403 before the upgrade, a gRPC call
UNAUTHENTICATED/PERMISSION_DENIED, and no stream is opened. Admission receives the principal,
so limits per principal need no new seam.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.errors import ConnectionDenied

__all__ = ["ANONYMOUS", "ConnectionDenied", "ConnectionPolicy", "ConnectionRequest", "Principal"]


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """What a connection offered before it was accepted. Header and metadata names are
    lower case."""

    route: str
    transport: str
    """``websocket`` or ``grpc``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    subprotocols: Sequence[str] = ()
    client: str | None = None
    """The peer's address, where the transport knows it."""
    query_items: Sequence[tuple[str, str]] = ()
    """Every query parameter in order, repeated ones included (``query`` keeps one each)."""
    url: str | None = None
    """The URL the client requested, as the server saw it (a WebSocket's ``ws://...``)."""

    def all_query_items(self) -> Sequence[tuple[str, str]]:
        """Every query parameter, repeated ones included where the transport kept them
        (else one of each, from ``query``)."""
        return self.query_items or tuple(self.query.items())


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection acts for."""

    name: str = "anonymous"
    max_streams: int | None = None
    """Concurrent streams this principal may hold (None: only the server's limits)."""
    subprotocol: str | None = None
    """The WebSocket subprotocol to accept the connection with, if the client offered one
    that the policy consumed."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    quotas: tuple[tuple[str, int], ...] = ()
    """More accounts its streams count against, as (account, limit): a token's own quota
    beside its key's ``max_streams``."""

    def accounts(self) -> tuple[tuple[str, int], ...]:
        """Every (account, limit) a new stream of this principal must fit in."""
        own = ((self.name, self.max_streams),) if self.max_streams is not None else ()
        return own + self.quotas


ANONYMOUS = Principal()

ConnectionPolicy = Callable[[ConnectionRequest], Principal]
"""Returns the principal, or raises ``ConnectionDenied``."""


def allow_all(request: ConnectionRequest) -> Principal:
    """The default policy: everyone is welcome, as the anonymous principal."""
    return ANONYMOUS
