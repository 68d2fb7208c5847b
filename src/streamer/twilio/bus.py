"""The call bus: how a call's events reach every front-end process and every pod.

A Twilio call is streamed by one process; its subscribers may connect to any. Every
process keeps its own ``CallHub`` (finals for replay, live events, the call's end), and
the bus carries each event from the process that has the call to every other process's
hub. One interface, three implementations:

- ``CallBus``: one process alone; the hub is the whole bus.
- ``FleetBus`` (the default of ``streamer serve --workers N``): a line of JSON per event
  over a local socket to the supervisor's ``BusRelay``, which passes it to every other
  process of the server. Nothing to run beside the server.
- ``RedisBus`` (``[bus] url = "redis://host:port/db"``): events on a Redis pub/sub channel
  that every process of every pod reads, and each call's finals in a capped Redis list
  (expiring ``retain_seconds`` after the call), for a late subscriber on a pod that never
  saw the call.

The callback of a call's finals is not the bus's: the process that has the call posts it,
once. A bus that is lost (the relay or Redis gone, too much unwritten) is reported
(``up``, ``on_state``: the health report and ``streamer_bus_up``), and ends every
subscription with ``bus_unavailable`` rather than leaving it waiting on events that cannot
come; a subscriber that connects while it is lost is refused the same way. The Redis bus
reconnects and is up again once Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final

from streamer.twilio.hub import CallHub, Subscription
from streamer.twilio.settings import BusSettings

log = logging.getLogger(__name__)

__all__ = ["BusLost", "BusRelay", "CallBus", "FleetBus", "RedisBus", "make_bus"]

RECONNECT_SECONDS: Final = 1.0
"""Seconds between attempts to reach a lost Redis again."""
MAX_UNSENT_BYTES: Final = 16 * 2**20
"""Bytes a process may have unwritten to the relay before the bus counts as lost."""


class BusLost(Exception):
    """The bus is lost: a call's events cannot be known here now (``bus_unavailable``)."""


class CallBus:
    """A call's events to this process's hub; the base of the buses that also carry them
    to other processes (``_send``) and take theirs (``_receive``)."""

    kind = "local"

    def __init__(self, hub: CallHub, *, on_state: Callable[[bool], None] | None = None) -> None:
        self.hub = hub
        self.origin = uuid.uuid4().hex
        """This process's name on the bus: its own events, coming back, are skipped."""
        self.up = True
        self.on_state = on_state or (lambda up: None)
        self._local: dict[str, int] = {}
        """Streams of each key that this process streams now."""
        self._unsent_ends: set[str] = set()
        """Keys whose calls ended here while the bus was lost: told once it is back."""

    # -- the process that has the call ----------------------------------------------------

    def opened(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._local[key] = self._local.get(key, 0) + 1
            self._unsent_ends.discard(key)
        self.hub.opened(keys)
        self._send({"op": "opened", "keys": list(keys)})

    def publish(self, keys: tuple[str, ...], text: str, *, final: bool) -> None:
        self.hub.publish(keys, text, final=final)
        self._send({"op": "publish", "keys": list(keys), "text": text, "final": final})

    def closed(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            if (left := self._local.get(key, 0) - 1) > 0:
                self._local[key] = left
            else:
                self._local.pop(key, None)
                if not self.up:
                    self._unsent_ends.add(key)
        self.hub.closed(keys)
        self._send({"op": "closed", "keys": list(keys)})

    # -- any process ----------------------------------------------------------------------

    async def subscribe(self, key: str) -> Subscription:
        """A subscription to ``key`` with the finals so far; ``BusLost`` while lost."""
        if not self.up:
            raise BusLost(f"the {self.kind} call bus is unavailable")
        if not self.hub.knows(key):
            await self._replay(key)
        return self.hub.subscribe(key)

    def status(self) -> dict[str, Any]:
        """For the health report."""
        return {"kind": self.kind, "up": self.up}

    async def start(self) -> None:
        """Connect (the base bus has nothing to connect to)."""

    async def close(self) -> None:
        """Disconnect."""

    # -- the implementations' part --------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        """Carry one event to the other processes (the base bus has none)."""

    async def _replay(self, key: str) -> None:
        """Bring the hub a topic it never saw, from the bus's own memory, if it has one."""

    def _receive(self, message: dict[str, Any]) -> None:
        """Apply another process's event to this process's hub."""
        if message.get("origin") == self.origin:
            return
        keys = tuple(message["keys"])
        op = message["op"]
        if op == "opened":
            self.hub.opened(keys)
        elif op == "publish":
            self.hub.publish(keys, message["text"], final=bool(message["final"]))
        elif op == "closed":
            self.hub.closed(keys)

    def _set_up(self, up: bool, why: str = "") -> None:
        if up == self.up:
            return
        self.up = up
        if up:
            log.info("the %s call bus is up", self.kind)
            # The calls that ended here meanwhile: their ends, so that no subscriber
            # elsewhere waits on them (their events of that time are not replayed).
            ends, self._unsent_ends = sorted(self._unsent_ends), set()
            if ends:
                self._send({"op": "closed", "keys": ends})
        else:
            log.error("the %s call bus is lost (%s): ending its subscriptions", self.kind, why)
            self.hub.fail()
            self.hub.forget(keep=set(self._local))
        self.on_state(up)


class FleetBus(CallBus):
    """The bus of one server's front-end processes, through the supervisor's relay at the
    local socket ``path``."""

    kind = "fleet"

    def __init__(
        self, hub: CallHub, path: str, *, on_state: Callable[[bool], None] | None = None
    ) -> None:
        super().__init__(hub, on_state=on_state)
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=2**24)
        self._reader = asyncio.create_task(self._read(reader), name="call-bus")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                self._receive(json.loads(line))
            why = "the relay closed the connection"
        except (OSError, ValueError) as error:
            why = str(error)
        self._set_up(False, why)

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is None or not self.up:
            return
        if writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self._set_up(False, "the relay is not reading")
            writer.transport.abort()
            return
        message["origin"] = self.origin
        writer.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._writer is not None:
            self._writer.close()


class BusRelay:
    """The supervisor's side of the fleet bus: every line a process writes to the local
    socket goes to every other process connected. One thread per process, in the
    supervisor; a process that does not read holds up the writer, whose unsent bytes then
    grow until its bus counts as lost (``MAX_UNSENT_BYTES``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(256)
        self._peers: dict[socket.socket, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._accept, name="bus-relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                peer, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._peers[peer] = threading.Lock()
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: socket.socket) -> None:
        with peer, peer.makefile("rb") as lines:
            for line in lines:
                with self._lock:
                    others = [(p, lock) for p, lock in self._peers.items() if p is not peer]
                for other, lock in others:
                    with lock, contextlib.suppress(OSError):
                        other.sendall(line)
        with self._lock:
            self._peers.pop(peer, None)

    def peers(self) -> int:
        """Processes connected now."""
        with self._lock:
            return len(self._peers)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
        with self._lock:
            for peer in self._peers:
                with contextlib.suppress(OSError):
                    peer.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class RedisBus(CallBus):
    """The bus of every process of every pod: a Redis pub/sub channel for the events,
    a capped list per call for the finals of its replay."""

    kind = "redis"

    def __init__(
        self,
        hub: CallHub,
        settings: BusSettings,
        *,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(hub, on_state=on_state)
        try:
            import redis.asyncio as aioredis
            import redis.exceptions
        except ImportError:  # pragma: no cover (installed with the redis extra)
            raise RuntimeError("[bus] url needs redis: pip install 'streamer[redis]'") from None
        assert settings.url is not None
        self._errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError, OSError)
        self._client = aioredis.from_url(
            settings.url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=2
        )
        self._prefix = settings.prefix
        self._channel = f"{settings.prefix}:calls"
        self._retain_ms = int(settings.retain_seconds * 1000)
        self._replay_len = hub.replay
        self._pending: asyncio.Queue[dict[str, Any]] = asyncio.Queue(settings.max_pending)
        self._tasks: list[asyncio.Task[None]] = []
        self.up = False  # until Redis answers

    def _finals(self, key: str) -> str:
        return f"{self._prefix}:finals:{key}"

    def _ended(self, key: str) -> str:
        return f"{self._prefix}:ended:{key}"

    async def start(self) -> None:
        """Connect; a Redis that does not answer is an error at start."""
        await self._client.ping()
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
        self._set_up(True)
        self._tasks = [
            asyncio.create_task(self._read(pubsub), name="call-bus-read"),
            asyncio.create_task(self._write(), name="call-bus-write"),
        ]

    def _send(self, message: dict[str, Any]) -> None:
        if not self.up:
            return
        message["origin"] = self.origin
        try:
            self._pending.put_nowait(message)
        except asyncio.QueueFull:
            self._set_up(False, "too many call events unwritten")

    async def _write(self) -> None:
        while True:
            message = await self._pending.get()
            try:
                await self._write_one(message)
            except self._errors as error:
                self._set_up(False, str(error))

    async def _write_one(self, message: dict[str, Any]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in message["keys"]:
                if message["op"] == "opened":
                    pipe.delete(self._ended(key))
                elif message["op"] == "closed":
                    pipe.set(self._ended(key), 1, px=self._retain_ms)
                    pipe.pexpire(self._finals(key), self._retain_ms)
                elif message["final"]:
                    pipe.rpush(self._finals(key), message["text"])
                    pipe.ltrim(self._finals(key), -self._replay_len, -1)
                    pipe.pexpire(self._finals(key), self._retain_ms)
            pipe.publish(self._channel, json.dumps(message, ensure_ascii=False))
            await pipe.execute()

    async def _read(self, pubsub: Any) -> None:
        while True:
            try:
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._receive(json.loads(message["data"]))
            except self._errors as error:
                self._set_up(False, str(error))
            # Lost: try again until Redis answers; what was missed meanwhile is lost too,
            # which the subscriptions ended with the loss have been told.
            while True:
                await asyncio.sleep(RECONNECT_SECONDS)
                with contextlib.suppress(*self._errors):
                    await pubsub.aclose()
                try:
                    await self._client.ping()
                    pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(self._channel)
                except self._errors:
                    continue
                self._drain_pending()
                self._set_up(True)
                break

    def _drain_pending(self) -> None:
        while not self._pending.empty():
            self._pending.get_nowait()

    async def _replay(self, key: str) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lrange(self._finals(key), 0, -1)
                pipe.exists(self._ended(key))
                finals, ended = await pipe.execute()
        except self._errors as error:
            self._set_up(False, str(error))
            raise BusLost("the redis call bus is unavailable") from error
        if finals or ended:
            self.hub.seed(key, [f.decode() for f in finals], ended=bool(ended))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*self._errors):
            await self._client.aclose()


def make_bus(
    settings: BusSettings,
    hub: CallHub,
    relay: str | None,
    *,
    on_state: Callable[[bool], None] | None = None,
) -> CallBus:
    """The bus the settings ask for: Redis where ``[bus] url`` is set, else the relay of
    this server's processes at ``relay`` where it has several, else this process alone."""
    if settings.url is not None:
        return RedisBus(hub, settings, on_state=on_state)
    if relay is not None:
        return FleetBus(hub, relay, on_state=on_state)
    return CallBus(hub, on_state=on_state)
