"""The outbox writes events in order on its own task and turns slow past its limit."""

from __future__ import annotations

import asyncio

from streamer.codecs.v1_json import encode_event
from streamer.events import Event, SpeechStarted
from streamer.transport.outbox import Outbox


def _events(count: int) -> list[Event]:
    return [SpeechStarted(channel=0, time=i / 10) for i in range(count)]


async def test_events_are_written_in_order_and_counted_once_each() -> None:
    sent: list[Event] = []
    written: list[str] = []

    async def write(text: str) -> None:
        await asyncio.sleep(0)
        written.append(text)

    outbox: Outbox[str] = Outbox(4, encode_event, sent.append, "test")
    outbox.start(write)
    events = _events(20)
    for event in events:
        outbox.put(event)
        await asyncio.sleep(0.001)  # a reader that keeps up
    await outbox.close()
    assert not outbox.slow
    assert sent == events
    assert written == [encode_event(e) for e in events]


async def test_a_client_that_does_not_read_turns_the_outbox_slow() -> None:
    sent: list[Event] = []
    blocked = asyncio.Event()

    async def write(text: str) -> None:
        await blocked.wait()  # the client never reads

    outbox: Outbox[str] = Outbox(3, encode_event, sent.append, "test")
    outbox.start(write)
    events = _events(10)
    for event in events:
        outbox.put(event)
    assert outbox.slow
    assert sent == events[:3]  # the limit; the rest were neither queued nor counted
    await asyncio.sleep(0.01)  # the writer takes one, which frees a place in the queue
    outbox.put(events[0])
    assert sent == events[:3]  # once slow, always slow: the connection is ending
    await outbox.close(grace=0.05)  # returns although the writer never finishes


async def test_close_without_start_is_harmless() -> None:
    outbox: Outbox[str] = Outbox(1, encode_event, lambda event: None, "test")
    await outbox.close()
    outbox.cancel()
