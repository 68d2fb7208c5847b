"""The fleet bus through a real relay on a local socket: a call streamed by one process
reaches the subscribers of another, with its replay; losing the relay ends them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streamer.twilio.bus import BusLost, BusRelay, CallBus, FleetBus
from streamer.twilio.hub import CallHub

KEYS = ("call:CA1", "stream:MZ1")


async def test_a_call_on_one_process_reaches_every_other_s_subscribers(tmp_path: Path) -> None:
    relay = BusRelay(str(tmp_path / "bus.sock"))
    relay.start()
    states: list[bool] = []
    streaming, watching, third = (
        FleetBus(CallHub(), relay.path),
        FleetBus(CallHub(), relay.path, on_state=states.append),
        FleetBus(CallHub(), relay.path),
    )
    for bus in (streaming, watching, third):
        await bus.start()
    try:
        async with asyncio.timeout(10):
            while relay.peers() < 3:  # noqa: ASYNC110 (the relay has taken each connection)
                await asyncio.sleep(0.01)
        early = await watching.subscribe("call:CA1")
        streaming.opened(KEYS)
        streaming.publish(KEYS, "interim", final=False)
        streaming.publish(KEYS, "final-1", final=True)
        streaming.closed(KEYS)
        got = []
        async with asyncio.timeout(10):
            while (text := await early.next()) is not None:
                got.append(text)
        assert got == ["interim", "final-1"] and early.ended and not early.failed
        late = await third.subscribe("stream:MZ1")  # its hub saw the call go by
        assert await late.next() == "final-1"
        assert await late.next() is None
        assert list(streaming.hub.subscribe("call:CA1").topic.finals) == ["final-1"]

        waiting = await watching.subscribe("call:CA2")
        relay.close()  # the supervisor is gone: the bus with it
        async with asyncio.timeout(10):
            assert await waiting.next() is None
        assert waiting.failed and not watching.up and states == [False]
        try:
            await watching.subscribe("call:CA3")
        except BusLost:
            pass
        else:
            raise AssertionError("a subscription on a lost bus")
    finally:
        for bus in (streaming, watching, third):
            await bus.close()
        relay.close()


async def test_one_process_alone_is_its_own_bus() -> None:
    bus = CallBus(CallHub())
    subscription = await bus.subscribe("call:CA1")
    bus.opened(KEYS)
    bus.publish(KEYS, "final", final=True)
    bus.closed(KEYS)
    assert await subscription.next() == "final"
    assert await subscription.next() is None and not subscription.failed
    assert bus.status() == {"kind": "local", "up": True}


class RecordingBus(CallBus):
    """A bus whose link to the other processes is a list (and a switch to lose it)."""

    kind = "recording"

    def __init__(self) -> None:
        super().__init__(CallHub())
        self.sent: list[dict[str, object]] = []

    def _send(self, message: dict[str, object]) -> None:
        if self.up:
            self.sent.append(message)


async def test_after_a_loss_no_subscriber_waits_on_a_stale_call() -> None:
    bus = RecordingBus()
    remote = ("call:CA9", "stream:MZ9")
    bus._receive({"origin": "elsewhere", "op": "opened", "keys": list(remote)})
    waiting = await bus.subscribe("call:CA9")
    bus.opened(KEYS)  # a call streamed here
    bus._set_up(False, "gone")
    assert waiting.failed and await waiting.next() is None
    assert not bus.hub.knows("call:CA9")  # its end may come while the bus is away
    assert bus.hub.knows("call:CA1")  # this process's own call is still known
    bus.closed(KEYS)  # ends while the bus is lost: nobody elsewhere hears it now
    bus._set_up(True)
    assert bus.sent[-1] == {"op": "closed", "keys": sorted(KEYS)}  # told once it is back
    again = await bus.subscribe("call:CA9")  # waits for the call afresh
    bus._receive({"origin": "elsewhere", "op": "closed", "keys": list(remote)})
    assert await again.next() is None and not again.failed
