"""The outbox writes events in order on its own task and turns slow past its limit."""

from __future__ import annotations

import asyncio

from streamer.codecs.v1_json import encode_event
from streamer.events import Event, SegmentResult, SpeechStarted
from streamer.transport.outbox import CLOSE_GRACE, CLOSE_GRACE_FACTOR, Outbox, close_grace


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
    woken: list[bool] = []
    outbox.on_slow = lambda: woken.append(outbox.slow)
    outbox.start(write)
    events = _events(10)
    for event in events:
        outbox.put(event)
    assert outbox.slow
    assert woken == [True]  # the driver is woken once, however many events follow
    assert sent == events[:3]  # the limit; the rest were neither queued nor counted
    await asyncio.sleep(0.01)  # the writer takes one, which frees a place in the queue
    outbox.put(events[0])
    assert sent == events[:3]  # once slow, always slow: the connection is ending
    await outbox.close(grace=0.05)  # returns although the writer never finishes


async def test_close_without_start_is_harmless() -> None:
    outbox: Outbox[str] = Outbox(1, encode_event, lambda event: None, "test")
    await outbox.close()
    outbox.cancel()


def _result(i: int, *, final: bool) -> SegmentResult:
    return SegmentResult(channel=0, start=i, end=i + 1, final=final)


async def test_a_full_outbox_drops_queued_interims_first_and_counts_them() -> None:
    dropped: list[Event] = []
    blocked = asyncio.Event()
    written: list[Event] = []

    async def write(event: Event) -> None:
        await blocked.wait()
        written.append(event)

    outbox: Outbox[Event] = Outbox(3, lambda e: e, lambda e: None, "test", dropped=dropped.append)
    outbox.start(write)
    interim_a, interim_b = _result(0, final=False), _result(1, final=False)
    finals = [_result(i, final=True) for i in range(2, 6)]
    for event in (interim_a, finals[0], interim_b):
        outbox.put(event)
    outbox.put(finals[1])  # full: the oldest interim makes room
    outbox.put(finals[2])  # and then the next
    assert dropped == [interim_a, interim_b] and not outbox.slow
    outbox.put(_result(9, final=False))  # full of finals: a new interim is itself dropped
    assert len(dropped) == 3 and outbox.interims_dropped == 3 and not outbox.slow
    outbox.put(finals[3])  # a final would be lost: only now is the client slow
    assert outbox.slow
    blocked.set()
    await outbox.close()
    assert written == finals[:3]


async def test_interims_dropped_for_a_slow_reader_leave_every_final() -> None:
    async def write(text: str) -> None:
        await asyncio.sleep(0.002)  # a reader slower than the results come

    outbox: Outbox[str] = Outbox(5, encode_event, lambda e: None, "test")
    outbox.start(write)
    for i in range(200):
        outbox.put(_result(i, final=i % 10 == 0))
        if i % 10 == 9:
            await asyncio.sleep(0.002)
    await outbox.close()
    assert not outbox.slow and outbox.interims_dropped > 0


async def test_close_waits_for_a_late_reader_and_says_when_it_never_read() -> None:
    reading = asyncio.Event()
    written: list[str] = []

    async def write(text: str) -> None:
        await reading.wait()  # the client reads only once told to
        written.append(text)

    outbox: Outbox[str] = Outbox(100, encode_event, lambda event: None, "test")
    outbox.start(write)
    events = _events(30)
    for event in events:
        outbox.put(event)
    closing = asyncio.create_task(outbox.close(grace=30))
    await asyncio.sleep(0)
    assert not closing.done()
    reading.set()  # reads late, within the grace
    assert await closing is False
    assert written == [encode_event(e) for e in events]

    never: Outbox[str] = Outbox(100, encode_event, lambda event: None, "test")
    never.start(lambda text: asyncio.Event().wait())
    for event in events:
        never.put(event)
    assert await never.close(grace=0.01) is True  # unwritten events: slow_consumer


async def test_a_writer_that_fails_is_not_a_slow_reader() -> None:
    async def write(text: str) -> None:
        raise ConnectionError("the peer went away")

    outbox: Outbox[str] = Outbox(100, encode_event, lambda event: None, "test")
    outbox.start(write)
    for event in _events(3):
        outbox.put(event)
    assert await outbox.close() is False


def test_the_close_grace_grows_with_what_is_queued_within_its_bound() -> None:
    assert close_grace(0) == CLOSE_GRACE
    assert close_grace(100) > close_grace(10) > CLOSE_GRACE
    assert close_grace(10**9) == CLOSE_GRACE_FACTOR * CLOSE_GRACE
    assert close_grace(10**9, 0.5) == CLOSE_GRACE_FACTOR * 0.5
