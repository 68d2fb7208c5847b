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
    """Whether a stream's results lag the sending of their audio by more than ``max_lag``.

    A client sends a message once its audio is whole, so a result is timed from when the
    message that carried its audio was sent, at the latest: when it arrived, or earlier
    when later messages arrived sooner after it than a real-time client could have sent
    them (audio that waited in the socket while the server was starved counts). So one
    message carrying seconds of audio, answered at once, is not behind. While the server
    measures that it is not keeping up (``pressed``), messages not read yet are taken to
    be waiting too: a live source sends at its pace from its first message. A stream sent
    faster than real time (a file) is never told.
    """

    __slots__ = ("_ahead", "_arrivals", "_clock", "_next", "_offset", "_pressed", "max_lag")

    def __init__(
        self, max_lag: float, clock: Callable[[], float], pressed: Callable[[], bool] | None
    ) -> None:
        self.max_lag = max_lag
        self._clock = clock
        self._pressed = pressed
        self._arrivals = ArrivalClock()
        self._offset: float | None = None  # the first message's arrival minus its audio end
        self._ahead = False
        self._next = 0.0

    def fed(self, total: float) -> None:
        """A message carrying the audio up to ``total`` seconds arrived now."""
        now = self._clock()
        self._arrivals.record(total, now)
        if self._ahead:
            return
        offset = now - total
        if self._offset is None:
            self._offset = offset
        elif offset < self._offset - AHEAD_MARGIN:
            self._ahead = True

    def behind(self, end: float) -> float | None:
        """The lag of a result for audio up to ``end`` seconds, if the stream must be told."""
        if self._ahead:
            return None
        now = self._clock()
        if now < self._next:
            return None
        arrivals = self._arrivals
        sent = arrivals.sent_by(end)
        if sent is None:
            return None
        if self._offset is not None and self._pressed is not None and self._pressed():
            carried = arrivals.carried_to(end)
            if carried is not None:
                sent = min(sent, self._offset + carried)
        if now - sent <= self.max_lag:
            return None
        self._next = now + self.max_lag
        return now - sent
