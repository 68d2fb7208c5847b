"""The call bus on real servers: a Twilio call's subscribers get its finals and ``done``
whichever process or pod streams the call.

- ``streamer serve --workers 2`` (the embedded bus, through the supervisor): ten calls,
  each with a subscriber connected before it and a late one after it ended; which process
  serves each connection is read from the upgrade's ``x-streamer-pid``, and the calls are
  placed so that both the same-process and the cross-process cases are run.
- Two servers sharing a real Redis (``redis-server`` started here): a subscriber on one,
  the call on the other; a late subscriber on a third server started after the call ended
  gets the replay from Redis.
- Redis going away mid-call: the subscriber is closed with 1011 ``bus_unavailable``, the
  health report and ``streamer_bus_up`` say so, and the bus comes back with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HOST, ServerProcess, free_port
from twilio_calls import Call, messages, mulaw
from websockets.asyncio.client import ClientConnection, connect

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
PID = "x-streamer-pid"
TIMEOUT = 60.0
"""The overall bound of a wait on the server; the events themselves end each wait."""


def url(server: ServerProcess, path: str = "/v1/twilio") -> str:
    return f"ws://{HOST}:{server.port}{path}"


def events_url(server: ServerProcess, call: Call) -> str:
    return url(server, f"/v1/twilio/calls/{call.call_sid}/events")


def numbered(n: int) -> Call:
    return Call(call_sid=f"CA{n:032d}", stream_sid=f"MZ{n:032d}")


def finals(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [
        (e["start_time"], e["end_time"]) for e in events if e["type"] == "segment" and e["is_final"]
    ]


class Subscriber:
    """A subscriber connected now (the upgrade answered: it is subscribed), recording its
    events on a task until the server closes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pid = int(ws.response.headers[PID]) if ws.response else 0
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._record())

    @classmethod
    async def connect(cls, target: str) -> Subscriber:
        return cls(await connect(target))

    async def _record(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.ws:
                self.events.append(json.loads(text))

    async def ended(self) -> tuple[int | None, str]:
        """The close code and reason, once the server has closed."""
        async with asyncio.timeout(TIMEOUT):
            await self.task
        return self.ws.close_code, self.ws.close_reason


async def place_call(server: ServerProcess, want: Callable[[int], bool]) -> ClientConnection:
    """A Twilio connection on a process ``want`` accepts (by its pid): connections are
    opened (and closed before any call) until the kernel hands one to such a process."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            ws = await connect(url(server))
            assert ws.response is not None
            if want(int(ws.response.headers[PID])):
                return ws
            await ws.close()


async def play(ws: ClientConnection, call: Call, seconds: float = 4.0) -> None:
    """Send a whole call at once and wait for the server's close."""
    sequence = messages(call, {"inbound": mulaw(AUDIO / "jfk.wav", seconds=seconds)})
    async with ws:
        for _, text in sequence:
            await ws.send(text)
        async with asyncio.timeout(TIMEOUT):
            with contextlib.suppress(Exception):
                await ws.recv()  # Twilio is sent nothing: this ends with the close
    assert ws.close_code == 1000


def health(server: ServerProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.http}/api/v1/health", timeout=5).json()
    return body


def check(subscriber: Subscriber, reference: list[tuple[float, float]], seconds: float) -> None:
    assert subscriber.events, "no events"
    assert subscriber.events[-1]["type"] == "done", subscriber.events[-3:]
    assert subscriber.events[-1]["audio_seconds"] == pytest.approx(seconds, abs=0.05)
    assert finals(subscriber.events) == reference


async def test_every_process_s_subscribers_get_every_call(
    launch: Callable[..., ServerProcess],
) -> None:
    server = launch(workers=2)
    pids = {p["pid"] for p in health(server)["processes"]}
    assert len(pids) == 2, pids
    cases: list[tuple[bool, bool]] = []
    reference: list[tuple[float, float]] | None = None
    for n in range(10):
        call = numbered(n)
        early = await Subscriber.connect(events_url(server, call))
        same = n % 2 == 0  # alternately on the subscriber's process and on the other
        ws = await place_call(server, lambda pid, mine=early.pid, same=same: (pid == mine) == same)
        call_pid = int(ws.response.headers[PID]) if ws.response else 0
        await play(ws, call)
        assert await early.ended() == (1000, "")
        late = await Subscriber.connect(events_url(server, call))
        assert await late.ended() == (1000, "")
        got = finals(early.events)
        assert got, f"call {n}: no finals"
        reference = reference or got  # the same audio each time: the same finals
        check(early, reference, 4.0)
        check(late, reference, 4.0)
        cases.append((early.pid == call_pid, late.pid == call_pid))
    assert {early for early, _ in cases} == {True, False}, cases
    assert server.gauge("streamer_bus_up") >= 1


# -- Redis --------------------------------------------------------------------------------


class Redis:
    """A real ``redis-server`` on a free port, nothing saved to disk."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/system-packages.txt)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        pytest.fail("redis-server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    running = Redis(tmp_path)
    running.start()
    yield running
    running.stop()


async def test_a_subscriber_on_one_server_gets_a_call_streamed_on_another(
    launch: Callable[..., ServerProcess], redis: Redis
) -> None:
    env = {"STREAMER_BUS__URL": redis.url}
    first, second = launch(env=env), launch(env=env)
    assert health(first)["bus"] == {"kind": "redis", "up": True}
    call = numbered(100)
    early = await Subscriber.connect(events_url(first, call))
    await play(await connect(url(second)), call)
    assert await early.ended() == (1000, "")
    reference = finals(early.events)
    assert reference
    check(early, reference, 4.0)
    # A late subscriber on a server that saw the call, and on one started after it ended.
    late = await Subscriber.connect(events_url(first, call))
    assert await late.ended() == (1000, "")
    check(late, reference, 4.0)
    third = launch(env=env)
    newcomer = await Subscriber.connect(events_url(third, call))
    assert await newcomer.ended() == (1000, "")
    check(newcomer, reference, 4.0)


async def test_losing_the_bus_mid_call_ends_its_subscribers_with_a_typed_error(
    launch: Callable[..., ServerProcess], redis: Redis
) -> None:
    env = {"STREAMER_BUS__URL": redis.url}
    first, second = launch(env=env), launch(env=env)
    call = numbered(200)
    subscriber = await Subscriber.connect(events_url(first, call))
    sequence = messages(call, {"inbound": mulaw(AUDIO / "jfk.wav", seconds=11.0)})
    async with connect(url(second)) as twilio:
        for _, text in sequence[:2]:  # connected, start: the call is open
            await twilio.send(text)
        async with asyncio.timeout(TIMEOUT):
            while second.gauge("streamer_streams_active") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            redis.stop()  # mid-call
            assert await subscriber.ended() == (1011, "bus_unavailable")
    assert health(first)["bus"] == {"kind": "redis", "up": False}
    assert first.gauge("streamer_bus_up") == 0
    assert first.gauge("streamer_bus_losses_total") == 1
    # While it is lost, a new subscriber is told at once rather than left waiting.
    refused = await Subscriber.connect(events_url(first, numbered(201)))
    assert await refused.ended() == (1011, "bus_unavailable")
    # Redis back: so is the bus.
    redis.start()
    async with asyncio.timeout(TIMEOUT):
        while not health(first)["bus"]["up"]:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert first.gauge("streamer_bus_up") == 1
