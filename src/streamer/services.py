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
from streamer.errors import (
    ConnectionDenied,
    InvalidFormat,
    InvalidMessage,
    Overloaded,
    ShuttingDown,
)
from streamer.events import Event, StreamError, Turn
from streamer.fleet import FleetSlot
from streamer.inference.model import Model
from streamer.inference.scheduler import Scheduler
from streamer.observability.metrics import Metrics
from streamer.observability.pressure import Pressure
from streamer.observability.stream import StreamTelemetry
from streamer.observability.tracing import ConnectionTrace, Tracing, parse_traceparent
from streamer.pipeline import Route, StreamOptions
from streamer.policy import ANONYMOUS, ConnectionPolicy, ConnectionRequest, Principal, allow_all
from streamer.protocol.messages import StartRequest
from streamer.segmentation.segmenter import VadParams, clamp
from streamer.segmentation.vad import VadEngine
from streamer.turn.engine import TurnEngine
from streamer.turn.stage import TurnSettings


@dataclass
class Services:
    """Everything shared across streams, plus the server's live state."""

    settings: Settings
    model: Model
    scheduler: Scheduler
    vad: VadEngine
    turns: TurnEngine | None = None
    """The end-of-turn model's engine, started by the first stream that detects turns."""
    connections: set[Any] = field(default_factory=set)
    streams: Counter[Route] = field(default_factory=Counter)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    drain_expired: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: Metrics = field(default_factory=lambda: Metrics(CollectorRegistry()))
    tracing: Tracing = field(default_factory=Tracing)
    policy: ConnectionPolicy = allow_all
    """Who may connect (asked once per connection, before any stream)."""
    quota_use: Counter[str] = field(default_factory=Counter)
    """Live streams per quota account (``Principal.accounts``)."""
    held: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The quota accounts each live stream (by id) counts against."""
    pressure: Pressure | None = None
    """This process's measured delays against their ceilings: admission refuses while
    any is past (None: streams and backlog alone decide)."""
    fleet: FleetSlot | None = None
    """This process's row in the table shared by all front-end processes (``--workers``);
    None for a single process."""

    def __post_init__(self) -> None:
        sources = self.metrics.sources
        sources.connections = self._connections_by_route
        sources.streams = lambda: {route.value: n for route, n in self.streams.items()}
        sources.queue_depth = lambda: self.scheduler.queued
        sources.busy_workers = lambda: self.scheduler.busy
        sources.workers = lambda: self.scheduler.pool.workers
        sources.workers_available = lambda: self.scheduler.pool.available_workers
        sources.workers_stuck = lambda: self.scheduler.pool.stuck_workers
        sources.workers_written_off = lambda: getattr(self.scheduler.pool, "written_off", 0)
        sources.interims_dropped = lambda: getattr(self.scheduler, "interims_dropped", 0)
        sources.interims_skipped = lambda: getattr(self.scheduler, "interims_skipped", 0)
        sources.capacity = self.capacity

    def _connections_by_route(self) -> Counter[str]:
        return Counter(str(getattr(c, "route", "unknown")) for c in self.connections)

    @property
    def live_streams(self) -> int:
        return sum(self.streams.values())

    @property
    def server_streams(self) -> int:
        """Live streams of the whole server: every front-end process's, when there are
        several."""
        return self.fleet.total_streams() if self.fleet is not None else self.live_streams

    def authorize(self, request: ConnectionRequest) -> Principal:
        """Ask the connection policy; a denial is counted and raised as ``ConnectionDenied``."""
        try:
            return self.policy(request)
        except ConnectionDenied as denied:
            self.metrics.connection_refused(request.route, denied.code)
            raise

    def admit(
        self, route: Route, principal: Principal = ANONYMOUS, stream_id: str | None = None
    ) -> None:
        """Count a new stream of ``principal`` in, or refuse it with a typed error.

        A stream past one of the principal's quotas is refused as ``overloaded``, naming
        the quota; other principals are not affected. With a ``stream_id``, the stream
        holds its quotas until ``stream_ended`` is told the same id.
        """
        if self.draining.is_set():
            raise ShuttingDown("the server is shutting down; connect to another instance")
        if (why := self.overload()) is not None:
            raise Overloaded(f"{why}; try again later")
        accounts = principal.accounts()
        for account, limit in accounts:
            if self.quota_use[account] >= limit:
                raise Overloaded(
                    f"{account} is at its quota of {limit} concurrent streams; "
                    "end one or try again later"
                )
        self.streams[route] += 1
        if stream_id is not None and accounts:
            self.held[stream_id] = tuple(account for account, _ in accounts)
            self.quota_use.update(self.held[stream_id])
        if self.fleet is not None:
            self.fleet.set_streams(self.live_streams)
        self.metrics.stream_started(route)

    def overload(self) -> str | None:
        """Why a new stream would be refused for lack of capacity now, or None.

        Capacity is the live-stream limit and the inference backlog: when the model falls
        behind, new streams are refused so that admitted ones keep their latency.
        """
        server = self.settings.server
        if self.server_streams >= server.max_streams:
            return f"the server is at its limit of {server.max_streams} streams"
        if self.scheduler.queued > server.max_backlog:
            return f"the server has more than {server.max_backlog} inferences queued"
        if self.pressure is not None:
            behind = self.pressure.behind()
            if self.fleet is not None:
                self.fleet.set_shedding(behind is not None)
            return behind
        return None

    def _pressed(self) -> bool:
        return self.pressure is not None and self.pressure.behind() is not None

    def capacity(self) -> int:
        """Streams this process can still take at its current cost per stream (0 while
        behind), within the room left under ``server.max_streams``."""
        room = self.settings.server.max_streams - self.server_streams
        if self.fleet is not None:  # a share of it, so that the processes' sum is the room
            room = -(-room // max(1, self.fleet.alive()))
        if self.pressure is None:
            return max(0, room)
        return self.pressure.capacity(room)

    def stream_ended(
        self, route: Route, outcome: str = "completed", stream_id: str | None = None
    ) -> None:
        """Count a stream out (and release its quotas); ``outcome`` is one of
        ``metrics.OUTCOMES``."""
        self.streams[route] -= 1
        for account in self.held.pop(stream_id, ()) if stream_id else ():
            self.quota_use[account] -= 1
            if self.quota_use[account] <= 0:
                del self.quota_use[account]
        if self.fleet is not None:
            self.fleet.set_streams(self.live_streams)
        self.metrics.stream_ended(route, outcome)

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
        """Metrics and spans of a new stream, under the client's ``traceparent`` if valid.

        A trace id that is not a valid ``traceparent`` (in ``start`` or in the handshake)
        is ignored, and the telemetry says so (``trace_ignored``).
        """
        valid = parse_traceparent(traceparent)
        ignored = bool(traceparent) and valid is None
        if valid is None and connection is not None and connection.ignored_traceparent:
            ignored = True
        parent, links = self.tracing.stream_parent(valid, connection)
        return StreamTelemetry(
            stream_id,
            route.value,
            tracer=self.tracing.tracer,
            metrics=self.metrics,
            parent=parent,
            links=links,
            client_traceparent=valid,
            trace_ignored=ignored,
            max_lag=self.settings.server.max_stream_lag_seconds,
            pressed=self._pressed if self.pressure is not None else None,
        )

    def stream_options(self, route: Route, request: StartRequest) -> StreamOptions:
        """Resolve one stream's options from the request, within the server's bounds.

        Raises ``InvalidFormat`` for a format past the stream's input budget, and
        ``InvalidMessage`` for turn detection on a route without it.
        """
        stream = self.settings.stream
        fmt = request.format
        rate = fmt.channels * fmt.sample_rate
        if rate > stream.max_samples_per_second:
            raise InvalidFormat(
                f"format: {fmt.channels} channels at {fmt.sample_rate} Hz is {rate} samples "
                f"per second, past this server's limit of {stream.max_samples_per_second} "
                "(stream.max_samples_per_second)"
            )
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
        turns: TurnSettings | None = None
        if request.turn_detection is not None:
            if route is not Route.SEGMENTED or self.turns is None:
                raise InvalidMessage(
                    "turn_detection: turn detection needs the segmented route "
                    "(/api/v1/segmented, gRPC's segmented streams, /v2/listen)"
                )
            detection, engine = request.turn_detection, self.settings.turn
            turns = TurnSettings(
                eot_threshold=detection.eot_threshold,
                eager_eot_threshold=detection.eager_eot_threshold,
                eot_timeout_ms=detection.eot_timeout_ms,
                min_pause_ms=engine.min_pause_ms,
                rescore_ms=engine.rescore_ms or None,
                update_ms=engine.update_ms,
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
            turns=turns,
        )

    def health(self) -> dict[str, Any]:
        """What a load balancer needs to route around a full, stalled or draining server.

        ``stalled``: every worker is stuck in the model past its deadline and none could be
        replaced, so no inference can run; ``available_workers`` below ``workers`` is
        capacity lost to stuck ones.
        """
        limit = self.settings.server.max_streams
        why = self.overload()
        full = why is not None
        pool = self.scheduler.pool
        available = pool.available_workers
        status = "ok"
        if self.draining.is_set():
            status = "draining"
        elif available == 0:
            status = "stalled"
        elif full:
            status = "full"
        return {
            "status": status,
            "streams": {route.value: self.streams[route] for route in Route},
            "connections": len(self.connections),
            "max_streams": limit,
            "load": round(self.server_streams / limit, 4) if limit else 0.0,
            "queued_inferences": self.scheduler.queued,
            "max_backlog": self.settings.server.max_backlog,
            "busy_workers": self.scheduler.busy,
            "workers": pool.workers,
            "available_workers": available,
            "stuck_workers": pool.stuck_workers,
            "capacity": self.capacity(),
            **({"reason": why} if why is not None else {}),
            **({"pressure": self.pressure.readings()} if self.pressure is not None else {}),
            **self._fleet_health(),
        }

    def _fleet_health(self) -> dict[str, Any]:
        """With several front-end processes: the server's streams and each process's row
        (``streams`` above, and the pool's figures, are this process's)."""
        if self.fleet is None:
            return {}
        return {
            "server_streams": self.fleet.total_streams(),
            "process": self.fleet.index,
            "processes": self.fleet.fleet.processes(),
        }
