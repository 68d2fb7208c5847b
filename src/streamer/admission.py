"""Admission: which new streams a server process takes, and what it tells a load balancer.

A stream is admitted below the server's stream limit and inference backlog, while the
process keeps up (``observability/pressure.py``) and the server is not draining, and
within its principal's quotas; it is counted until it ends. Built by the composition root
(``app.py``) from plain values; the stream factory (``streams.py``) asks it for each stream.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from typing import Any

from streamer.errors import Overloaded, ShuttingDown, StreamLimit
from streamer.events import Route
from streamer.fleet import FleetSlot
from streamer.inference.scheduler import Scheduler
from streamer.observability.metrics import Metrics
from streamer.observability.pressure import Pressure
from streamer.policy import ANONYMOUS, Principal


class Admission:
    """Counts the live streams and their quotas; admits, refuses and reports health."""

    def __init__(
        self,
        *,
        max_streams: int,
        max_backlog: int,
        scheduler: Scheduler,
        metrics: Metrics,
        draining: asyncio.Event,
        connections: Collection[Any] = (),
        pressure: Pressure | None = None,
        fleet: FleetSlot | None = None,
        within_estimate: bool = False,
        model_name: str = "",
        device: str = "",
    ) -> None:
        """``max_streams``: live streams of the whole server; ``max_backlog``: queued
        inferences past which new streams wait. ``draining``: set when the server stops
        taking streams. ``connections``: the open connections, as health counts them.
        ``pressure``: this process's measured delays against their ceilings, refusing
        while any is past (None: streams and backlog alone decide). ``fleet``: this
        process's row in the table shared by all front-end processes (``--workers``).
        ``within_estimate``: also refuse once the capacity estimate reaches 0
        (``server.admit_within_estimate``). ``model_name`` and ``device``: the model that
        serves and where it runs, as health reports them."""
        self.max_streams = max_streams
        self.max_backlog = max_backlog
        self.scheduler = scheduler
        self.metrics = metrics
        self.draining = draining
        self.connections = connections
        self.pressure = pressure
        self.fleet = fleet
        self.within_estimate = within_estimate
        self.model_name = model_name
        self.device = device
        self.streams: Counter[Route] = Counter()
        """Live streams per route."""
        self.quota_use: Counter[str] = Counter()
        """Live streams per quota account (``Principal.accounts``)."""
        self.held: dict[str, tuple[str, ...]] = {}
        """The quota accounts each live stream (by id) counts against."""
        self.turning: set[str] = set()
        """The live streams (by id) that detect turns: the turn engine's CPU is theirs."""

    @property
    def live_streams(self) -> int:
        return sum(self.streams.values())

    @property
    def server_streams(self) -> int:
        """Live streams of the whole server: every front-end process's, when there are
        several."""
        return self.fleet.total_streams() if self.fleet is not None else self.live_streams

    @property
    def turn_streams(self) -> int:
        """Live streams of this process that detect turns."""
        return len(self.turning)

    def admit(
        self,
        route: Route,
        principal: Principal = ANONYMOUS,
        stream_id: str | None = None,
        *,
        turns: bool = False,
    ) -> None:
        """Count a new stream of ``principal`` in, or refuse it with a typed error.

        A stream past the server's stream limit or one of the principal's quotas is
        refused as ``overloaded`` (``StreamLimit``), naming the limit; other principals
        are not affected by a quota. With a ``stream_id``, the stream holds its quotas
        until ``stream_ended`` is told the same id. ``turns``: the stream detects turns,
        so its estimate includes the turn engine's cost per stream (counted as such with
        a ``stream_id``).
        """
        if self.draining.is_set():
            raise ShuttingDown("the server is shutting down; connect to another instance")
        if (why := self.overload(turns=turns)) is not None:
            limited = self.server_streams >= self.max_streams
            raise (StreamLimit if limited else Overloaded)(f"{why}; try again later")
        accounts = principal.accounts()
        for account, limit in accounts:
            if self.quota_use[account] >= limit:
                raise StreamLimit(
                    f"{account} is at its quota of {limit} concurrent streams; "
                    "end one or try again later"
                )
        self.streams[route] += 1
        if stream_id is not None and accounts:
            self.held[stream_id] = tuple(account for account, _ in accounts)
            self.quota_use.update(self.held[stream_id])
        if stream_id is not None and turns:
            self.turning.add(stream_id)
        if self.fleet is not None:
            self.fleet.set_streams(self.live_streams)
        self.metrics.stream_started(route)

    def overload(self, *, turns: bool = False) -> str | None:
        """Why a new stream (``turns``: one that detects turns) would be refused for lack
        of capacity now, or None.

        Capacity is the live-stream limit and the inference backlog: when the model falls
        behind, new streams are refused so that admitted ones keep their latency.
        """
        if self.server_streams >= self.max_streams:
            return f"the server is at its limit of {self.max_streams} streams"
        if self.scheduler.queued > self.max_backlog:
            return f"the server has more than {self.max_backlog} inferences queued"
        if self.pressure is not None:
            behind = self.pressure.behind()
            if self.fleet is not None:
                self.fleet.set_shedding(behind is not None)
            if behind is None and self.within_estimate and self.capacity(turns=turns) == 0:
                return "the server is at its estimated capacity (server.admit_within_estimate)"
            return behind
        return None

    def pressed(self) -> bool:
        """Whether the process measures that it is not keeping up now."""
        return self.pressure is not None and self.pressure.behind() is not None

    def capacity(self, *, turns: bool = False) -> int:
        """Streams this process can still take at its current cost per stream (0 while
        behind), within the room left under ``server.max_streams``; ``turns``: streams
        that detect turns, each also charged the turn engine's cost per such stream."""
        room = self.max_streams - self.server_streams
        if self.fleet is not None:  # a share of it, so that the processes' sum is the room
            room = -(-room // max(1, self.fleet.alive()))
        if self.pressure is None:
            return max(0, room)
        return self.pressure.capacity(room, self.live_streams, turns=turns)

    def sample_cpu(self) -> None:
        """Take the pressure's CPU sample (the app does every second)."""
        if self.pressure is not None:
            self.pressure.sample_cpu(self.live_streams, self.turn_streams)

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
        if stream_id is not None:
            self.turning.discard(stream_id)
        if self.fleet is not None:
            self.fleet.set_streams(self.live_streams)
        self.metrics.stream_ended(route, outcome)

    def health(self) -> dict[str, Any]:
        """What a load balancer needs to route around a full, stalled or draining server.

        ``stalled``: every worker is stuck in the model past its deadline and none could be
        replaced, so no inference can run; ``available_workers`` below ``workers`` is
        capacity lost to stuck ones.
        """
        limit = self.max_streams
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
            "max_backlog": self.max_backlog,
            "busy_workers": self.scheduler.busy,
            "workers": pool.workers,
            "available_workers": available,
            "stuck_workers": pool.stuck_workers,
            "model": self.model_name,
            "device": self.device,
            "capacity": self.capacity(),
            "turn_capacity": self.capacity(turns=True),
            "turn_streams": self.turn_streams,
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
