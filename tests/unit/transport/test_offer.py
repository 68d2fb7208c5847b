"""The driver taking binary messages straight from the transport (``ConnectionDriver.offer``),
as the WebSocket protocol hands them over while the driver waits with nothing else to do:
the same events, in the same order, as when every message goes through ``receive``."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest
from test_connections import START, STOP, STOP_CLOSE, assert_good, chunks, noise, settings

from streamer.codecs import v1_json
from streamer.errors import ErrorCode
from streamer.inference.model import TestModel
from streamer.pipeline import Route
from streamer.protocol.actions import Close
from streamer.protocol.connection import WEBSOCKET
from streamer.protocol.inputs import Input
from streamer.services import Services
from streamer.testing import running_services, v1_decode
from streamer.transport.driver import ConnectionDriver
from streamer.transport.outbox import Outbox


class Socket:
    """A connection's protocol with the driver's sink attached, as
    ``LimitedWebSocketProtocol`` is: a binary message is offered to the driver while
    nothing is queued ahead of it, and queued for ``receive`` when declined."""

    def __init__(self, services: Services, route: Route) -> None:
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.sent: list[str] = []
        self.taken = 0
        self.queued = 0
        self.read = 0
        """Messages the codec read: each once, taken or queued."""
        outbox: Outbox[Any] = Outbox(
            services.max_pending_events,
            v1_json.encode_event,
            functools.partial(services.event_sent, route),
            "test",
        )
        outbox.start(self._write)
        self.outbox = outbox
        self.driver = ConnectionDriver(
            services,
            route,
            WEBSOCKET,
            self._receive,
            outbox,
            limits=services.limits,
            interruptible=True,
        )
        self.run = asyncio.ensure_future(self.driver.run())

    async def _write(self, text: str) -> None:
        self.sent.append(text)

    async def _receive(self) -> Input | None:
        return self._read(await self.queue.get())

    def _read(self, message: str | bytes) -> Input:
        self.read += 1
        return v1_decode(message)

    def deliver(self, message: str | bytes) -> None:
        if isinstance(message, bytes) and self.queue.empty():
            if self.driver.offer(functools.partial(self._read, message)):
                self.taken += 1
                return
        self.queued += 1
        self.queue.put_nowait(message)

    async def send(self, messages: list[str | bytes], gap: float = 0.0) -> Close:
        for message in messages:
            self.deliver(message)
            await asyncio.sleep(gap)  # each message arrives in a callback of its own
        close = await self.run
        await self.outbox.close()
        return close

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.sent]


async def test_real_time_audio_is_fed_as_it_comes_without_a_receive() -> None:
    async with running_services(settings(), TestModel.speedy()) as services:
        socket = Socket(services, Route.SEGMENTED)
        await asyncio.sleep(0.01)  # the driver waits for its first message
        audio = chunks(noise(1.0))
        close = await socket.send([START, *audio, STOP_CLOSE], gap=0.05)
    assert close == Close()
    received = socket.events()
    assert received[0]["type"] == "ready"
    assert (received[-1]["type"], received[-1]["audio_seconds"]) == ("done", 1.0)
    # Every audio message was taken from the socket's callback; the start and the stop
    # went through receive.
    assert (socket.taken, socket.queued) == (len(audio), 2)


@pytest.mark.parametrize("route", [Route.SIMPLE, Route.SEGMENTED])
async def test_a_sender_ahead_of_its_stream_loses_and_reorders_nothing(route: Route) -> None:
    """Sent as fast as the loop turns, a message comes while the one before it still
    waits on the stream: it is declined and queued, and those after it queue behind it."""
    held = settings(stream={"max_in_flight": 1})
    async with running_services(held, TestModel.speedy(delay=0.02)) as services:
        socket = Socket(services, route)
        await asyncio.sleep(0.01)
        close = await socket.send(
            [START, *chunks(noise(2.5)), STOP, START, *chunks(noise(2.5, 1)), STOP_CLOSE]
        )
    assert close == Close()
    received = socket.events()
    first = next(i for i, e in enumerate(received) if e["type"] == "done") + 1
    if route is Route.SIMPLE:
        assert_good(received[:first])
        assert_good(received[first:])
    else:
        assert [received[first - 1]["audio_seconds"], received[-1]["audio_seconds"]] == [2.5] * 2
    assert socket.taken >= 1 and socket.queued > 4
    assert socket.read == socket.taken + socket.queued  # none read twice


async def test_an_offered_message_that_is_not_a_feed_is_carried_out_by_the_task() -> None:
    """Audio with no stream open: the machine's error event, from the driver's task, and
    the connection goes on."""
    async with running_services(settings(), TestModel.speedy()) as services:
        socket = Socket(services, Route.SIMPLE)
        await asyncio.sleep(0.01)
        socket.deliver(chunks(noise(0.1))[0])
        assert socket.taken == 1
        close = await socket.send([START, *chunks(noise(2.5)), STOP_CLOSE], gap=0.0)
    assert close == Close()
    received = socket.events()
    assert received[0]["type"] == "error" and received[0]["code"] == "not_started"
    assert_good(received[1:])


async def test_audio_past_the_stream_limit_offered_ends_the_stream_as_received_would() -> None:
    limited = settings(stream={"max_audio_seconds": 1.0})
    async with running_services(limited, TestModel.speedy()) as services:
        socket = Socket(services, Route.SIMPLE)
        await asyncio.sleep(0.01)
        close = await socket.send([START, *chunks(noise(2.0))], gap=0.01)
    assert close.code is ErrorCode.SESSION_EXPIRED
    received = socket.events()
    assert [e["type"] for e in received][-2:] == ["done", "error"]
    assert received[-2]["audio_seconds"] == 1.0


async def test_no_offer_is_taken_while_a_notice_waits_or_before_the_driver_waits() -> None:
    async with running_services(settings(), TestModel.speedy()) as services:
        socket = Socket(services, Route.SIMPLE)
        audio = chunks(noise(0.5))
        assert not socket.driver.offer(lambda: v1_decode(audio[0]))  # its task has not run yet
        await asyncio.sleep(0.01)
        socket.deliver(START)
        await asyncio.sleep(0.01)
        assert socket.driver.offer(lambda: v1_decode(audio[0]))
        services.draining.set()  # the drain's notice, not yet seen by the driver's task
        assert not socket.driver.offer(lambda: v1_decode(audio[1]))
        close = await socket.send([*audio[1:], STOP_CLOSE], gap=0.01)
    assert close == Close()
    assert socket.events()[-1]["audio_seconds"] == 0.5
