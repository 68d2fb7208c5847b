"""Where a call's events go: subscribers of the call (by callSid or streamSid), each with
the finals so far, then live events; and a callback POST of each final.

In memory, on the event loop: the codec publishes as the stream's events are encoded, and
each subscriber's connection reads its own bounded ``Subscription``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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

    async def next(self) -> str | None:
        """The next event, or None once the call ended (or the subscriber overflowed)."""
        while True:
            if self.overflowed:
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

    def opened(self, call: CallInfo) -> None:
        for key in self.keys(call):
            topic = self._topic(key)
            topic.streams += 1
            topic.ended = False

    def publish(self, call: CallInfo, text: str, *, final: bool) -> None:
        for key in self.keys(call):
            topic = self._live.get(key)
            if topic is None:
                continue
            if final:
                topic.finals.append(text)
            for subscription in topic.subscribers:
                subscription.push(text)

    def closed(self, call: CallInfo) -> None:
        for key in self.keys(call):
            topic = self._live.get(key)
            if topic is None:
                continue
            topic.streams -= 1
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


class CallPublisher:
    """The codec's ``CallSink``: the hub, and the call's callback for finals."""

    def __init__(
        self,
        hub: CallHub,
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
        self.hub.opened(call)
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
        self.hub.publish(call, text, final=final)
        url = self._callbacks.get(call.stream_sid)
        if url is not None and final and body.get("type") == "segment" and self.post is not None:
            self.post(url, text)

    def closed(self, call: CallInfo) -> None:
        self._callbacks.pop(call.stream_sid, None)
        self.hub.closed(call)
