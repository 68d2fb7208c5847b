"""What every connection of a server process shares, on every transport.

Built by the composition root (``app.py``) from plain values; transports receive it and
never build parts, and read no settings. Streams are opened and ended by ``streams``
(the stream factory), which asks ``admission`` for each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from streamer.admission import Admission
from streamer.errors import ConnectionDenied
from streamer.events import Event, Route, StreamError, Turn
from streamer.observability.metrics import Metrics
from streamer.observability.tracing import ConnectionTrace, Tracing
from streamer.policy import ConnectionPolicy, ConnectionRequest, Principal, allow_all
from streamer.protocol.connection import UNLIMITED, Limits
from streamer.streams import StreamFactory


class Connection(Protocol):
    """An open connection, as the server counts it."""

    @property
    def route(self) -> Route: ...


@dataclass
class Services:
    """The shared parts of a server process and its live state, for its transports."""

    admission: Admission
    streams: StreamFactory
    metrics: Metrics
    tracing: Tracing = field(default_factory=Tracing)
    policy: ConnectionPolicy = allow_all
    """Who may connect (asked once per connection, before any stream)."""
    limits: Limits = UNLIMITED
    """Each connection's limits (idle time, a stream's length, the message rate)."""
    max_pending_events: int = 1000
    """Events queued for a client past which it is behind (``Outbox``)."""
    close_grace_seconds: float = 10.0
    """How long a connection's events still queued at its end wait for a client that
    reads late, before it is ended with ``slow_consumer`` (``Outbox.close``)."""
    connections: set[Connection] = field(default_factory=set)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the server stops taking streams."""
    drain_expired: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the drain's grace is over and open streams end."""

    def authorize(self, request: ConnectionRequest) -> Principal:
        """Ask the connection policy; a denial is counted and raised as ``ConnectionDenied``."""
        try:
            return self.policy(request)
        except ConnectionDenied as denied:
            self.metrics.connection_refused(request.route, denied.code)
            raise

    def bytes_in(self, route: Route, n: int) -> None:
        """One binary audio message of ``n`` bytes arrived."""
        self.metrics.received(route, n)

    def event_sent(self, route: Route, event: Event) -> None:
        """One event was queued for a client."""
        self.metrics.event_sent(
            route, event.kind, event.code if isinstance(event, StreamError) else None
        )
        if isinstance(event, Turn):
            self.metrics.turn_event(route, event.event)

    def interim_dropped(self, route: Route, event: Event) -> None:
        """An interim result was dropped for a client that is not reading."""
        self.metrics.interim_dropped(route)

    def results_unread(self, route: Route) -> None:
        """A connection ended with ``slow_consumer`` after its stream: its client did not
        read the results left queued within the close grace."""
        self.metrics.results_unread(route)

    def open_connection(self, route: Route, headers: Mapping[str, str]) -> ConnectionTrace:
        """Start a connection's span (its parent: a ``traceparent`` in ``headers``)."""
        return self.tracing.connection(route.value, headers)
