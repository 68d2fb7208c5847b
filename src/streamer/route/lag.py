"""When a stream must be told that its results lag its audio (``falling_behind``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from streamer.observability.stream import ArrivalClock

__all__ = ["AHEAD_MARGIN", "LagWatch"]

AHEAD_MARGIN: Final = 0.5
"""Seconds of audio ahead of the wall clock (since its first audio) past which a stream
is taken to be sent faster than real time, and is not told it is behind."""


class LagWatch:
    """Whether a stream's results lag its audio's arrival by more than ``max_lag``.

    Measured from when the message that carried a result's audio arrived, so that one
    message carrying seconds of audio is not taken to be late. While the server measures
    that it is not keeping up (``pressed``), audio that has not been read yet is taken to
    be waiting in the socket: a live source's audio was sent at its pace from its first
    sample. A stream sent faster than real time (a file) is never told.
    """

    __slots__ = (
        "_ahead",
        "_arrivals",
        "_clock",
        "_first",
        "_next",
        "_offset",
        "_pressed",
        "max_lag",
    )

    def __init__(
        self, max_lag: float, clock: Callable[[], float], pressed: Callable[[], bool] | None
    ) -> None:
        self.max_lag = max_lag
        self._clock = clock
        self._pressed = pressed
        self._arrivals = ArrivalClock()
        self._offset: float | None = None  # arrival time minus audio seconds, first message
        self._first: float | None = None  # when the stream's first sample was sent, at best
        self._ahead = False
        self._next = 0.0

    def fed(self, media: float, total: float) -> None:
        now = self._clock()
        self._arrivals.record(total, now)
        if self._ahead:
            return
        offset = now - total
        if self._offset is None:
            self._offset = offset
            self._first = now - (total - media)
        elif offset < self._offset - AHEAD_MARGIN:
            self._ahead = True

    def behind(self, end: float) -> float | None:
        """The lag of a result for audio up to ``end`` seconds, if the stream must be told."""
        if self._ahead:
            return None
        now = self._clock()
        if now < self._next:
            return None
        sent = self._arrivals.arrival(end)
        if sent is None:
            return None
        if self._first is not None and self._pressed is not None and self._pressed():
            sent = min(sent, self._first + end)
        if now - sent <= self.max_lag:
            return None
        self._next = now + self.max_lag
        return now - sent
