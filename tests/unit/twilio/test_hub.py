"""The call hub: subscribers before and after a call get every final, a replay that is
bounded, ended calls kept for late subscribers, a subscriber that falls behind cut off."""

from __future__ import annotations

import asyncio

import pytest

from streamer.codecs.twilio_media import CallInfo
from streamer.twilio.hub import CallHub, CallPublisher, HubFull, Subscription

CALL = CallInfo("MZ1", "CA1", ("inbound",))
KEYS = CallHub.keys(CALL)


async def drain(subscription: Subscription) -> list[str]:
    out = []
    while (text := await asyncio.wait_for(subscription.next(), 1)) is not None:
        out.append(text)
    return out


async def test_early_and_late_subscribers_get_every_final_then_the_end() -> None:
    hub = CallHub()
    early = hub.subscribe("call:CA1")
    hub.opened(KEYS)
    hub.publish(KEYS, "interim", final=False)
    hub.publish(KEYS, "final-1", final=True)
    late = hub.subscribe("stream:MZ1")
    hub.publish(KEYS, "final-2", final=True)
    hub.closed(KEYS)
    after = hub.subscribe("call:CA1")
    assert await drain(early) == ["interim", "final-1", "final-2"]
    assert await drain(late) == ["final-1", "final-2"]
    assert await drain(after) == ["final-1", "final-2"]
    assert hub.live_calls() == 0


async def test_the_replay_is_bounded_and_ended_calls_are_retained_up_to_a_count() -> None:
    hub = CallHub(replay=2, retain=1)
    hub.opened(KEYS)
    for n in range(5):
        hub.publish(KEYS, f"f{n}", final=True)
    hub.closed(KEYS)
    assert await drain(hub.subscribe("call:CA1")) == ["f3", "f4"]
    other = CallInfo("MZ2", "CA2", ("inbound",))
    hub.opened(CallHub.keys(other))
    hub.closed(CallHub.keys(other))
    waiting = hub.subscribe("call:CA1")  # forgotten: a wait for a new call of that id
    assert not waiting.ended
    hub.unsubscribe(waiting)
    assert hub.live_calls() == 0


async def test_a_subscriber_that_falls_behind_is_cut_off() -> None:
    hub = CallHub(queue=3)
    slow = hub.subscribe("call:CA1")
    hub.opened(KEYS)
    for n in range(5):
        hub.publish(KEYS, f"e{n}", final=False)
    assert await slow.next() is None and slow.overflowed


def test_too_many_waited_for_calls_are_refused() -> None:
    hub = CallHub(max_calls=1)
    hub.subscribe("call:CA1")
    with pytest.raises(HubFull):
        hub.subscribe("call:CA2")


async def test_a_callback_gets_finals_only_and_a_host_not_allowed_is_told() -> None:
    posted: list[tuple[str, str]] = []
    outcomes: list[str] = []
    hub = CallHub()
    sink = CallPublisher(
        hub,
        allowed=lambda url: url.startswith("http://ok/"),
        post=lambda url, text: posted.append((url, text)),
        on_callback=outcomes.append,
    )
    call = CallInfo("MZ1", "CA1", ("inbound",), {"callback": "http://ok/hook"})
    sink.opened(call)
    sink.publish(call, {"type": "segment", "is_final": False}, final=False)
    sink.publish(call, {"type": "segment", "is_final": True}, final=True)
    sink.publish(call, {"type": "done"}, final=True)
    assert [url for url, _ in posted] == ["http://ok/hook"]
    refused = CallInfo("MZ2", "CA2", ("inbound",), {"callback": "http://evil/"})
    watcher = hub.subscribe("call:CA2")
    sink.opened(refused)
    sink.publish(refused, {"type": "segment", "is_final": True}, final=True)
    assert outcomes == ["refused"] and len(posted) == 1
    assert '"forbidden"' in (await watcher.next() or "")
