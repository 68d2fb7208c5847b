"""One connection's outgoing events: queued, written by a single task, bounded.

A slow client never blocks the pipeline that emits its events; past ``limit`` unwritten
events the outbox turns ``slow``, drops what follows, and the transport ends the connection
with ``slow_consumer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from streamer.events import Event

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_GRACE = 5.0
"""Seconds the writer may take, once closed, to write what is still queued."""


class Outbox(Generic[T]):
    def __init__(
        self,
        limit: int,
        encode: Callable[[Event], T],
        sent: Callable[[Event], None],
        transport: str,
    ) -> None:
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(limit)
        self._encode = encode
        self._sent = sent
        self._transport = transport
        self._writer: asyncio.Task[None] | None = None
        self.slow = False
        """The client stopped reading: the connection must end."""

    def put(self, event: Event) -> None:
        """Queue one event (the pipeline's ``emit``); counts it as sent."""
        if self._queue_item(self._encode(event)):
            self._sent(event)

    def put_reply(self, payload: object) -> None:
        """Queue a codec's own reply (not a stream event: ``encode`` must know its type)."""
        self._queue_item(self._encode(payload))  # type: ignore[arg-type]

    def _queue_item(self, item: T) -> bool:
        if self.slow:
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.slow = True
            log.warning("%s client is not reading its events; ending it", self._transport)
            return False
        return True

    def start(self, write: Callable[[T], Awaitable[None]]) -> None:
        """Write every queued item with ``write``, in order, on a task of its own."""

        async def pump() -> None:
            while (item := await self._queue.get()) is not None:
                await write(item)

        self._writer = asyncio.create_task(pump(), name=f"{self._transport}-writer")

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Let the writer finish what is queued (within ``grace``), then stop it."""
        writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, grace)
        self.cancel()

    def cancel(self) -> None:
        """Stop the writer now; what is still queued is not written."""
        if self._writer is not None:
            self._writer.cancel()
