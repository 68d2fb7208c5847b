"""falling_behind: told when results lag the arrival of their audio, not otherwise.

The pipeline runs on a fake inference backend (tickets the test resolves) and a clock the
test moves, so that lag is exact and nothing waits on wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from streamer.audio.formats import AudioFormat
from streamer.events import Event, SegmentResult, StreamError
from streamer.inference.backend import Ticket
from streamer.inference.model import Output
from streamer.pipeline import Route, StreamOptions, StreamPipeline
from streamer.testing import ManualClock

RATE = 16000
FMT = AudioFormat(channels=1, sample_rate=RATE, bit_depth=16, is_float=False)


class FakeTicket:
    """A ticket the test resolves."""

    def __init__(self, audio: NDArray[np.float32], final: bool) -> None:
        self.final = final
        self.audio = audio
        self._future: asyncio.Future[Output] = asyncio.get_running_loop().create_future()

    def __await__(self) -> Generator[Any, None, Output]:
        return asyncio.shield(self._future).__await__()

    def resolve(self) -> None:
        self._future.set_result({"count": len(self.audio)})

    def cancel(self) -> bool:
        return self._future.cancel()

    def hasten(self) -> None:
        pass  # nothing queues here

    def done(self) -> bool:
        return self._future.done()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def exception(self) -> BaseException | None:
        return self._future.exception()

    def add_done_callback(self, callback: Callable[[Ticket], None]) -> None:
        self._future.add_done_callback(lambda _: callback(self))


class HeldBackend:
    """Keeps every ticket until the test resolves it (or at once, with ``answer``)."""

    def __init__(self, answer: bool = False) -> None:
        self.answer = answer
        self.tickets: list[FakeTicket] = []

    def submit(
        self,
        stream: str,
        audio: NDArray[np.float32],
        *,
        final: bool = True,
        words: bool = False,
        forced: bool = False,
    ) -> Ticket:
        ticket = FakeTicket(audio, final)
        if self.answer:
            ticket.resolve()
        self.tickets.append(ticket)
        return ticket

    def cancel_stream(self, stream: str) -> int:
        return sum(ticket.cancel() for ticket in self.tickets)


def audio(seconds: float) -> bytes:
    return np.zeros(round(seconds * RATE), dtype="<i2").tobytes()


def pipeline(
    backend: HeldBackend, clock: ManualClock, events: list[Event], *, pressed: bool = False
) -> StreamPipeline:
    options = StreamOptions(
        Route.SIMPLE, FMT, RATE, chunk_seconds=1.0, max_in_flight=64, max_lag=2.0
    )
    return StreamPipeline(
        "s", options, backend=backend, emit=events.append, clock=clock, pressed=lambda: pressed
    )


def behind(events: list[Event]) -> list[StreamError]:
    return [e for e in events if isinstance(e, StreamError) and e.code == "falling_behind"]


@pytest.mark.parametrize("pressed", [False, True])
async def test_one_message_of_many_seconds_answered_at_once_is_not_behind(
    pressed: bool,
) -> None:
    clock = ManualClock()
    events: list[Event] = []
    # Even while the server is not keeping up: the message's audio was whole only when it
    # was sent.
    stream = pipeline(HeldBackend(answer=True), clock, events, pressed=pressed)
    stream.start()
    await stream.feed(audio(8.0))  # seconds of audio in one message, all arrived now
    await stream.finish()
    assert len([e for e in events if isinstance(e, SegmentResult)]) == 8
    assert behind(events) == []


async def test_a_real_time_stream_whose_results_come_late_is_told_once_by_how_much() -> None:
    clock, backend = ManualClock(), HeldBackend()
    events: list[Event] = []
    stream = pipeline(backend, clock, events)
    stream.start()
    for _ in range(12):  # 6 s sent in real time, half a second a message
        await stream.feed(audio(0.5))
        clock.now += 0.5
    clock.now += 10.0  # the model answers ten seconds after the last audio
    for ticket in backend.tickets:
        ticket.resolve()
    await stream.finish()
    (told,) = behind(events)  # once: at most one notice per max_lag seconds
    assert told.retryable and "15.5 s behind" in told.message  # the first second's result
    assert events.index(told) == 1  # right after the result that was late


async def test_a_stream_sent_faster_than_real_time_is_never_told() -> None:
    clock, backend = ManualClock(), HeldBackend()
    events: list[Event] = []
    stream = pipeline(backend, clock, events)
    stream.start()
    for _ in range(12):  # 6 s sent in 1.2 s
        await stream.feed(audio(0.5))
        clock.now += 0.1
    clock.now += 10.0
    for ticket in backend.tickets:
        ticket.resolve()
    await stream.finish()
    assert len([e for e in events if isinstance(e, SegmentResult)]) == 6
    assert behind(events) == []


async def test_a_real_time_stream_read_late_in_a_burst_is_told() -> None:
    clock, backend = ManualClock(), HeldBackend(answer=True)
    events: list[Event] = []
    stream = pipeline(backend, clock, events)
    stream.start()
    await stream.feed(audio(0.5))
    clock.now += 6.0  # the server reads nothing for six seconds; the client goes on
    for _ in range(10):  # then reads what waited in the socket, all at once
        await stream.feed(audio(0.5))
    await stream.finish()
    # The second message (audio to 1 s) cannot have been sent later than 4.5 s before the
    # eleventh (to 5.5 s) arrived: its result, answered at once, is 4.5 s late.
    (told,) = behind(events)
    assert "4.5 s behind" in told.message
