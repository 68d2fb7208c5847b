"""One connection's outgoing events: queued, written by a single task, bounded.

A slow client never blocks the pipeline that emits its events. Past ``limit`` unwritten
events the outbox makes room by dropping the oldest queued interim result (an interim
that arrives with none queued to drop is itself dropped); each dropped interim is counted
with ``dropped``. Only when an event that must not be lost (a final result, an error,
``done``...) finds the queue full of such events does the outbox turn ``slow``: it drops
what follows, and the transport ends the connection with ``slow_consumer``.

Once the stream is over, ``close`` gives the writer time to write what is still queued:
the outbox's ``grace`` (``server.close_grace_seconds``, ``CLOSE_GRACE`` by default) plus
``CLOSE_GRACE_PER_EVENT`` for each queued event, at most ``CLOSE_GRACE_FACTOR`` times the
grace, so a client that reads late still gets every result. The memory this
holds per connection is bounded by the queue's ``limit`` (``server.max_pending_events``
encoded events; a final's frame is a few hundred bytes). A client that has not read them
by then ends with ``slow_consumer`` too (``close`` says so): a normal close never hides
results that were not written.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from streamer.events import Event, SegmentResult
from streamer.protocol.actions import CodecReply, Outgoing

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_GRACE = 10.0
"""Seconds the writer may take, once closed, to write what is still queued, at least."""
CLOSE_GRACE_PER_EVENT = 0.02
"""Seconds more for each event still queued at the close (a long backlog, more time)."""
CLOSE_GRACE_FACTOR = 6.0
"""The most time the close gives the writer, in multiples of its grace, whatever is queued."""


def close_grace(queued: int, grace: float = CLOSE_GRACE) -> float:
    """Seconds a closing outbox waits for its writer with ``queued`` events unwritten."""
    return min(CLOSE_GRACE_FACTOR * grace, grace + queued * CLOSE_GRACE_PER_EVENT)


def droppable(event: object) -> bool:
    """Whether an event may be dropped for a client that is behind: an interim result,
    which a later result of the same audio supersedes."""
    return isinstance(event, SegmentResult) and not event.final


class Outbox(Generic[T]):
    def __init__(
        self,
        limit: int,
        encode: Callable[[Event], T],
        sent: Callable[[Event], None],
        transport: str,
        *,
        dropped: Callable[[Event], None] | None = None,
        grace: float = CLOSE_GRACE,
        encode_reply: Callable[[CodecReply], T] | None = None,
    ) -> None:
        """``encode`` writes a stream's events in the wire's terms; ``encode_reply``, the
        codec's own replies, for a front-end whose codec has them."""
        self._limit = limit
        self._grace = grace
        self._queue: collections.deque[tuple[Outgoing, T]] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._encode = encode
        self._encode_reply = encode_reply
        self._sent = sent
        self._dropped = dropped
        self._transport = transport
        self._writer: asyncio.Task[None] | None = None
        self.slow = False
        """The client stopped reading and a result would be lost: the connection must end."""
        self.on_slow: Callable[[], None] | None = None
        """Called once, when the outbox turns ``slow`` (the driver's wake-up)."""
        self.interims_dropped = 0

    def put(self, event: Event) -> None:
        """Queue one event (the pipeline's ``emit``); counts it as sent."""
        if self._queue_item(event, self._encode(event)):
            self._sent(event)

    def put_reply(self, payload: CodecReply) -> None:
        """Queue a codec's own reply (not a stream event); a reply is never dropped."""
        if self._encode_reply is None:
            raise TypeError(f"the {self._transport} codec has no replies to send")
        self._queue_item(payload, self._encode_reply(payload))

    def _queue_item(self, event: Outgoing, item: T) -> bool:
        """Queue ``item`` (the encoding of ``event``), making room by dropping an interim;
        False: it was dropped (an interim) or the client is slow."""
        if self.slow:
            return False
        if len(self._queue) >= self._limit:
            victim = next((i for i, (e, _) in enumerate(self._queue) if droppable(e)), None)
            if victim is not None:
                self._drop(self._queue[victim][0])
                del self._queue[victim]
            elif droppable(event):
                self._drop(event)
                return False
            else:
                self.slow = True
                log.warning("%s client is not reading its events; ending it", self._transport)
                if self.on_slow is not None:
                    self.on_slow()
                return False
        self._queue.append((event, item))
        self._wake.set()
        return True

    def _drop(self, event: Outgoing) -> None:
        self.interims_dropped += 1
        if self._dropped is not None and isinstance(event, SegmentResult):
            self._dropped(event)

    def start(self, write: Callable[[T], Awaitable[None]]) -> None:
        """Write every queued item with ``write``, in order, on a task of its own."""

        async def pump() -> None:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                _, item = self._queue.popleft()
                await write(item)

        self._writer = asyncio.create_task(pump(), name=f"{self._transport}-writer")

    async def close(self, grace: float | None = None) -> bool:
        """Let the writer finish what is queued (within ``grace``, by default
        ``close_grace`` of what is queued), then stop it. True: the grace ran out with
        events unwritten, because the client did not read them (not because the
        connection failed): the connection must end with ``slow_consumer``."""
        writer = self._writer
        if writer is None:
            return False
        self._closed = True
        self._wake.set()
        if grace is None:
            grace = close_grace(len(self._queue), self._grace)
        await asyncio.wait({writer}, timeout=grace)
        expired = not writer.done()
        if not expired and not writer.cancelled():
            writer.exception()  # a failed write (the peer went away) is no client's fault
        self.cancel()
        if expired:
            log.warning(
                "%s client did not read its last %d events in %.0f s; ending it",
                self._transport,
                len(self._queue),
                grace,
            )
        return expired

    def cancel(self) -> None:
        """Stop the writer now; what is still queued is not written."""
        if self._writer is not None:
            self._writer.cancel()
