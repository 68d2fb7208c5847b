"""The shared runtime of one server process: what every connection, on every transport, uses.

Built by the composition root (``app.py``); transports receive it and never build parts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from streamer.config import Settings
from streamer.errors import Overloaded, ShuttingDown
from streamer.inference.model import Model
from streamer.inference.scheduler import Scheduler
from streamer.pipeline import Route, StreamOptions
from streamer.protocol.messages import StartRequest
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

    @property
    def live_streams(self) -> int:
        return sum(self.streams.values())

    def admit(self, route: Route) -> None:
        """Count a new stream in, or refuse it with a typed error."""
        if self.draining.is_set():
            raise ShuttingDown("the server is shutting down; connect to another instance")
        limit = self.settings.server.max_streams
        if self.live_streams >= limit:
            raise Overloaded(f"the server is at its limit of {limit} streams; try again later")
        self.streams[route] += 1

    def stream_ended(self, route: Route) -> None:
        self.streams[route] -= 1

    def bytes_in(self, route: Route, n: int) -> None:
        """Hook for ingest accounting."""

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
        )

    def health(self) -> dict[str, Any]:
        """What a load balancer needs to route around a full or draining server."""
        limit = self.settings.server.max_streams
        return {
            "status": "draining" if self.draining.is_set() else "ok",
            "streams": {route.value: self.streams[route] for route in Route},
            "connections": len(self.connections),
            "max_streams": limit,
            "load": round(self.live_streams / limit, 4) if limit else 0.0,
            "queued_inferences": self.scheduler.queued,
            "busy_workers": self.scheduler.busy,
        }
