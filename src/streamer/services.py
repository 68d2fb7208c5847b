"""The shared runtime of one server process: what every connection, on every transport, uses.

Built by the composition root (``app.py``); transports receive it and never build parts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry

from streamer.config import Settings
from streamer.errors import Overloaded, ShuttingDown
from streamer.inference.model import Model
from streamer.inference.scheduler import Scheduler
from streamer.observability.metrics import Metrics
from streamer.observability.stream import StreamTelemetry
from streamer.observability.tracing import ConnectionTrace, Tracing
from streamer.pipeline import Event, Route, StreamOptions
from streamer.protocol.messages import ErrorEvent, StartRequest
from streamer.segmentation.segmenter import VadParams, clamp
from streamer.segmentation.vad import VadEngine


@dataclass
class Services:
    """Everything shared across streams, plus the server's live state."""

    settings: Settings
    model: Model
    scheduler: Scheduler
    vad: VadEngine
    connections: set[Any] = field(default_factory=set)
    streams: Counter[Route] = field(default_factory=Counter)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    drain_expired: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: Metrics = field(default_factory=lambda: Metrics(CollectorRegistry()))
    tracing: Tracing = field(default_factory=Tracing)

    def __post_init__(self) -> None:
        sources = self.metrics.sources
        sources.connections = self._connections_by_route
        sources.streams = lambda: {route.value: n for route, n in self.streams.items()}
        sources.queue_depth = lambda: self.scheduler.queued
        sources.busy_workers = lambda: self.scheduler.busy
        sources.workers = lambda: self.scheduler.pool.workers
        sources.interims_dropped = lambda: getattr(self.scheduler, "interims_dropped", 0)
        sources.interims_skipped = lambda: getattr(self.scheduler, "interims_skipped", 0)

    def _connections_by_route(self) -> Counter[str]:
        return Counter(str(getattr(c, "route", "unknown")) for c in self.connections)

    @property
    def live_streams(self) -> int:
        return sum(self.streams.values())

    def admit(self, route: Route) -> None:
        """Count a new stream in, or refuse it with a typed error."""
        if self.draining.is_set():
            raise ShuttingDown("the server is shutting down; connect to another instance")
        if (why := self.overload()) is not None:
            raise Overloaded(f"{why}; try again later")
        self.streams[route] += 1
        self.metrics.stream_started(route)

    def overload(self) -> str | None:
        """Why a new stream would be refused for lack of capacity now, or None.

        Capacity is the live-stream limit and the inference backlog: when the model falls
        behind, new streams are refused so that admitted ones keep their latency.
        """
        server = self.settings.server
        if self.live_streams >= server.max_streams:
            return f"the server is at its limit of {server.max_streams} streams"
        if self.scheduler.queued > server.max_backlog:
            return f"the server has more than {server.max_backlog} inferences queued"
        return None

    def stream_ended(self, route: Route, outcome: str = "completed") -> None:
        """Count a stream out; ``outcome`` is one of ``metrics.OUTCOMES``."""
        self.streams[route] -= 1
        self.metrics.stream_ended(route, outcome)

    def bytes_in(self, route: Route, n: int) -> None:
        """One binary audio message of ``n`` bytes arrived."""
        self.metrics.received(route, n)

    def event_sent(self, route: Route, event: Event) -> None:
        """One event was queued for a client."""
        self.metrics.event_sent(
            route, event.type, event.code if isinstance(event, ErrorEvent) else None
        )

    def open_connection(self, route: Route, headers: Mapping[str, str]) -> ConnectionTrace:
        """Start a connection's span (its parent: a ``traceparent`` in ``headers``)."""
        return self.tracing.connection(route.value, headers)

    def stream_telemetry(
        self,
        route: Route,
        stream_id: str,
        traceparent: str | None,
        connection: ConnectionTrace | None = None,
    ) -> StreamTelemetry:
        """Metrics and spans of a new stream, under the client's ``traceparent`` if valid."""
        parent, links = self.tracing.stream_parent(traceparent, connection)
        return StreamTelemetry(
            stream_id,
            route.value,
            tracer=self.tracing.tracer,
            metrics=self.metrics,
            parent=parent,
            links=links,
            client_traceparent=traceparent,
        )

    def stream_options(self, route: Route, request: StartRequest) -> StreamOptions:
        """Resolve one stream's options from the request, within the server's bounds."""
        stream = self.settings.stream
        params = VadParams(interim_interval_s=stream.interim_interval)
        overrides: dict[str, Any] = {}
        if request.vad is not None:
            overrides = request.vad.model_dump(exclude_none=True)
        if request.interim_interval is not None:
            overrides["interim_interval_s"] = request.interim_interval
        if overrides:
            params = clamp(replace(params, **overrides))
        params = replace(
            params, interim_interval_s=max(params.interim_interval_s, stream.min_interim_interval)
        )
        return StreamOptions(
            route=route,
            fmt=request.format.to_audio_format(),
            model_rate=self.model.sample_rate,
            chunk_seconds=stream.chunk_seconds,
            max_in_flight=stream.max_in_flight,
            interim=request.interim_results,
            vad_params=params,
            words=request.word_times,
        )

    def health(self) -> dict[str, Any]:
        """What a load balancer needs to route around a full or draining server."""
        limit = self.settings.server.max_streams
        full = self.overload() is not None
        return {
            "status": "draining" if self.draining.is_set() else "full" if full else "ok",
            "streams": {route.value: self.streams[route] for route in Route},
            "connections": len(self.connections),
            "max_streams": limit,
            "load": round(self.live_streams / limit, 4) if limit else 0.0,
            "queued_inferences": self.scheduler.queued,
            "max_backlog": self.settings.server.max_backlog,
            "busy_workers": self.scheduler.busy,
        }
