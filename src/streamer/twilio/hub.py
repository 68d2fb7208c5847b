"""Where a call's events go: subscribers of the call (by callSid or streamSid), each with
the finals so far, then live events; and a callback POST of each final.

In memory, on the event loop: the codec publishes as the stream's events are encoded, and
each subscriber's connection reads its own bounded ``Subscription``. Every process keeps
such a hub; the call bus (``twilio.bus``) brings it the calls other processes and pods
stream, so that a subscriber may connect to any of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamer.codecs.twilio_media import CallInfo

log = logging.getLogger(__name__)


class HubFull(Exception):
    """Too many calls are streamed or waited for."""


class Subscription:
    """One subscriber's queue of JSON texts; it ends with the call or when the subscriber
    falls ``limit`` events behind (``overflowed``)."""

    def __init__(self, topic: Topic, limit: int) -> None:
        self.topic = topic
        self.limit = limit
        self.overflowed = False
        self.ended = False
        self.failed = False
        """The bus that brings the call's events was lost: the call's end is unknown."""
        self._items: deque[str] = deque()
        self._wake = asyncio.Event()

    def push(self, text: str) -> None:
        if len(self._items) >= self.limit:
            self.overflowed = True
        else:
            self._items.append(text)
        self._wake.set()

    def end(self) -> None:
        self.ended = True
        self._wake.set()

    def fail(self) -> None:
        self.failed = True
        self.end()

    async def next(self) -> str | None:
        """The next event, or None once the call ended (or the subscriber overflowed)."""
        while True:
            if self.overflowed or self.failed:
                return None
            if self._items:
                return self._items.popleft()
            if self.ended:
                return None
            self._wake.clear()
            await self._wake.wait()


@dataclass(eq=False)
class Topic:
    """The events of one call (or one stream of it)."""

    key: str
    finals: deque[str]
    subscribers: set[Subscription] = field(default_factory=set)
    streams: int = 0
    """Streams publishing here now."""
    ended: bool = False
    """Every stream that published here has ended."""


class CallHub:
    """Topics by ``call:<callSid>`` and ``stream:<streamSid>``."""

    def __init__(
        self, *, replay: int = 500, retain: int = 200, max_calls: int = 10_000, queue: int = 1000
    ) -> None:
        self.replay = replay
        self.retain = retain
        self.max_calls = max_calls
        self.queue = queue
        self._live: dict[str, Topic] = {}
        self._ended: OrderedDict[str, Topic] = OrderedDict()

    @staticmethod
    def keys(call: CallInfo) -> tuple[str, str]:
        return f"call:{call.call_sid}", f"stream:{call.stream_sid}"

    def _topic(self, key: str) -> Topic:
        topic = self._live.get(key) or self._ended.pop(key, None)
        if topic is None:
            topic = Topic(key, deque(maxlen=self.replay))
        self._live[key] = topic
        return topic

    def knows(self, key: str) -> bool:
        """Whether this hub has the topic ``key`` (live, waited for, or ended and kept)."""
        return key in self._live or key in self._ended

    def seed(self, key: str, finals: list[str], *, ended: bool) -> None:
        """Take a topic this hub never saw from elsewhere (the bus's replay): its finals
        so far, and whether it ended."""
        if self.knows(key):
            return
        topic = Topic(key, deque(finals, maxlen=self.replay), streams=0 if ended else 1)
        if ended:
            topic.ended = True
            self._ended[key] = topic
        else:
            self._live[key] = topic

    def fail(self) -> None:
        """End every subscription with ``failed``: the bus is lost, and with it the news
        of what the calls do next."""
        for topic in self._live.values():
            for subscription in topic.subscribers:
                subscription.fail()
            topic.subscribers.clear()

    def forget(self, keep: set[str]) -> None:
        """Drop the live topics but those in ``keep``: after the bus was lost, what this
        hub knew of the calls streamed elsewhere may be stale (an end it never heard of),
        and a later subscriber must not wait on it for ever."""
        for key in [key for key in self._live if key not in keep]:
            del self._live[key]

    def subscribe(self, key: str) -> Subscription:
        """A subscription to ``key``: the finals so far are in it already."""
        if key not in self._live and key not in self._ended and len(self._live) >= self.max_calls:
            raise HubFull(f"{self.max_calls} calls are streamed or waited for")
        topic = self._live.get(key) or self._ended.get(key) or self._topic(key)
        subscription = Subscription(topic, self.queue + len(topic.finals))
        for text in topic.finals:
            subscription.push(text)
        if topic.ended:
            subscription.end()
        else:
            topic.subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        topic = subscription.topic
        topic.subscribers.discard(subscription)
        if not topic.subscribers and not topic.streams and not topic.ended:
            self._live.pop(topic.key, None)  # a wait for a call that never came

    def opened(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            topic = self._topic(key)
            topic.streams += 1
            topic.ended = False

    def publish(self, keys: tuple[str, ...], text: str, *, final: bool) -> None:
        for key in keys:
            topic = self._live.get(key)
            if topic is None:
                continue
            if final:
                topic.finals.append(text)
            for subscription in topic.subscribers:
                subscription.push(text)

    def closed(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            topic = self._live.get(key)
            if topic is None:
                continue
            topic.streams = max(0, topic.streams - 1)
            if topic.streams:
                continue
            topic.ended = True
            for subscription in topic.subscribers:
                subscription.end()
            topic.subscribers.clear()
            del self._live[key]
            self._ended[key] = topic
            while len(self._ended) > 2 * self.retain:  # a call and its stream
                self._ended.popitem(last=False)

    def live_calls(self) -> int:
        return len(self._live)


Post = Callable[[str, str], None]
"""Queue a POST of a JSON text to a URL (never waits)."""


class CallEvents(Protocol):
    """Where a publisher puts a call's events: a hub, or the bus that feeds every hub."""

    def opened(self, keys: tuple[str, ...]) -> None: ...
    def publish(self, keys: tuple[str, ...], text: str, *, final: bool) -> None: ...
    def closed(self, keys: tuple[str, ...]) -> None: ...


class CallPublisher:
    """The codec's ``CallSink``: the call's events onto the bus (every process's hub), and
    the call's callback for finals, posted here only: by the process that has the call."""

    def __init__(
        self,
        hub: CallEvents,
        *,
        allowed: Callable[[str], bool] = lambda url: False,
        post: Post | None = None,
        on_callback: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.hub = hub
        self.allowed = allowed
        self.post = post
        self.on_callback = on_callback
        self._callbacks: dict[str, str] = {}

    def opened(self, call: CallInfo) -> None:
        self.hub.opened(CallHub.keys(call))
        url = call.custom_parameters.get("callback")
        if url is None:
            return
        if self.post is None or not self.allowed(url):
            self.on_callback("refused")
            log.warning(
                "twilio stream %s: callback %r is not an allowed host", call.stream_sid, url
            )
            body = {
                "type": "error",
                "code": "forbidden",
                "message": "the callback's host is not one of [twilio] callback_hosts; "
                "results go to subscribers only",
            }
            self.publish(
                call,
                {**body, "call_sid": call.call_sid, "stream_sid": call.stream_sid},
                final=False,
            )
            return
        self._callbacks[call.stream_sid] = url

    def publish(self, call: CallInfo, body: Mapping[str, Any], *, final: bool) -> None:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
        self.hub.publish(CallHub.keys(call), text, final=final)
        url = self._callbacks.get(call.stream_sid)
        if url is not None and final and body.get("type") == "segment" and self.post is not None:
            self.post(url, text)

    def closed(self, call: CallInfo) -> None:
        self._callbacks.pop(call.stream_sid, None)
        self.hub.closed(CallHub.keys(call))
