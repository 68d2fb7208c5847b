"""What the front-end processes of one server share: a small table in shared memory.

``streamer serve --workers N`` runs N front-end processes on the same ports. Each owns one
row of a ``multiprocessing`` shared array and writes only its own row (its pid, its live
streams, whether it is shedding load); any process reads all rows, so admission holds
``server.max_streams`` for the server as a whole and ``/api/v1/health`` reports the whole
server. No lock: a row is a few aligned 64-bit words, each written by one process.

Tolerance: two processes admitting at the same instant each see the other's count from
just before, so the server can pass ``max_streams`` by at most ``workers - 1`` streams,
for as long as those streams last.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["Fleet", "FleetSlot"]

_HEADER: Final = 1  # [0]: the supervisor's generation counter (restarts so far)
_FIELDS: Final = 4  # pid, live streams, shedding (0/1), restarts of this slot
_PID, _STREAMS, _SHEDDING, _RESTARTS = range(_FIELDS)


class Fleet:
    """The shared table of ``workers`` front-end processes (built by the supervisor)."""

    def __init__(self, workers: int, array: Any = None, *, bus: str | None = None) -> None:
        if workers < 1:
            raise ValueError("a fleet has at least one process")
        self.workers = workers
        self.bus = bus
        """The local socket of the supervisor's call bus relay (``twilio.bus``)."""
        self.array: Any = (
            array
            if array is not None
            else multiprocessing.get_context("spawn").RawArray("q", _HEADER + workers * _FIELDS)
        )

    def _at(self, index: int, field: int) -> int:
        return _HEADER + index * _FIELDS + field

    def slot(self, index: int) -> FleetSlot:
        if not 0 <= index < self.workers:
            raise IndexError(f"no process {index} in a fleet of {self.workers}")
        return FleetSlot(self, index)

    def reset(self, index: int, *, restarted: bool = False) -> None:
        """Clear a process's row (it exited; its streams are gone with it)."""
        self.array[self._at(index, _PID)] = 0
        self.array[self._at(index, _STREAMS)] = 0
        self.array[self._at(index, _SHEDDING)] = 0
        if restarted:
            self.array[self._at(index, _RESTARTS)] += 1
            self.array[0] += 1

    def total_streams(self) -> int:
        return sum(int(self.array[self._at(i, _STREAMS)]) for i in range(self.workers))

    def processes(self) -> list[dict[str, int | bool]]:
        """Each process's row, for the health report."""
        return [
            {
                "index": i,
                "pid": int(self.array[self._at(i, _PID)]),
                "streams": int(self.array[self._at(i, _STREAMS)]),
                "shedding": bool(self.array[self._at(i, _SHEDDING)]),
                "restarts": int(self.array[self._at(i, _RESTARTS)]),
            }
            for i in range(self.workers)
        ]


@dataclass(frozen=True)
class FleetSlot:
    """One process's view: its own row to write, every row to read."""

    fleet: Fleet
    index: int

    def started(self, pid: int) -> None:
        self.fleet.array[self.fleet._at(self.index, _PID)] = pid

    def set_streams(self, n: int) -> None:
        self.fleet.array[self.fleet._at(self.index, _STREAMS)] = n

    def set_shedding(self, shedding: bool) -> None:
        self.fleet.array[self.fleet._at(self.index, _SHEDDING)] = int(shedding)

    def total_streams(self) -> int:
        return self.fleet.total_streams()

    def alive(self) -> int:
        """Processes serving now (those with a pid in their row)."""
        return sum(1 for p in self.fleet.processes() if p["pid"])
