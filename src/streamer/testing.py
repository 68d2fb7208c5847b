"""An in-process harness: one connection, driven without a socket.

It runs the real connection machine and driver over real services (scheduler, VAD, model)
with a list of inbound messages, and records what the connection writes, through the same
bounded outbox a transport uses. A front-end's codec is tested here first; its shell, which
only moves bytes, is tested on a real socket.

::

    async with running_services(Settings()) as services:
        outcome = await run_connection(services, Route.SIMPLE, [start, audio, stop])
        assert outcome.close.code is None
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from streamer.app import build_services
from streamer.codecs import v1_json
from streamer.config import Settings
from streamer.errors import ClientError
from streamer.events import Event
from streamer.inference.model import Model
from streamer.pipeline import Route
from streamer.policy import ANONYMOUS, Principal
from streamer.protocol.actions import Close, CodecReply
from streamer.protocol.connection import GRPC, WEBSOCKET, Mode
from streamer.protocol.inputs import Disconnected, Input, Invalid
from streamer.services import Services
from streamer.transport.driver import ConnectionDriver
from streamer.transport.outbox import Outbox

__all__ = [
    "ManualClock",
    "Outcome",
    "Pause",
    "codec_decoder",
    "run_connection",
    "running_services",
    "v1_decode",
]

T = TypeVar("T")  # a native outbound message


class ManualClock:
    """A clock (seconds, as ``time.perf_counter``) that moves only when a test sets
    ``now``: for the deadlines, windows and rates of the sans-I/O parts."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Pause:
    """Among the inbound messages: the client sends nothing for ``seconds``."""

    seconds: float


@dataclass
class Outcome(Generic[T]):
    """What one connection wrote, in order, and how it ended."""

    sent: list[T] = field(default_factory=list)
    close: Close = field(default_factory=Close)


def v1_decode(message: str | bytes) -> Input:
    """Decode a v1 WebSocket frame as the shell does: text is a request, bytes are audio."""
    if isinstance(message, bytes):
        return v1_json.decode_bytes(message)
    return v1_json.decode_text(message)


class TextAndBinary(Protocol):
    """A front-end codec's inbound half: its text frames and its binary frames."""

    def decode_text(self, text: str) -> Input: ...

    def decode_bytes(self, data: bytes) -> Input: ...


def codec_decoder(codec: TextAndBinary) -> Callable[[Any], Input]:
    """``run_connection``'s ``decode`` for a front-end codec: text and binary frames go
    through ``codec``, and an inbound item that is already an input (the ``StartRequest``
    a codec's ``opening`` holds, say) goes in as it is."""

    def decode(message: Any) -> Input:
        if isinstance(message, bytes):
            return codec.decode_bytes(message)
        if isinstance(message, str):
            return codec.decode_text(message)
        return cast(Input, message)

    return decode


@contextlib.asynccontextmanager
async def running_services(
    settings: Settings | None = None, model: Model | None = None
) -> AsyncIterator[Services]:
    """Real services (scheduler and VAD running), stopped on exit."""
    services = build_services(settings or Settings(), model)
    services.streams.scheduler.start()
    services.streams.vad.start()
    try:
        yield services
    finally:
        await services.streams.scheduler.close()
        services.streams.vad.close()
        if services.streams.turns is not None:
            services.streams.turns.close()


_END = object()


async def run_connection(
    services: Services,
    route: Route,
    inbound: Iterable[Any],
    *,
    decode: Callable[[Any], Input] = v1_decode,
    encode: Callable[[Event], Any] = v1_json.encode_event,
    encode_reply: Callable[[CodecReply], Any] | None = None,
    mode: Mode = WEBSOCKET,
    end: Input | None = None,
    principal: Principal = ANONYMOUS,
    write: Callable[[Any], Any] | None = None,
    gone: asyncio.Future[None] | None = None,
    mark_finalize: bool = False,
    interruptible: bool | None = None,
) -> Outcome[Any]:
    """Run one connection over ``inbound`` (native messages, each decoded by ``decode``,
    and ``Pause``s); ``encode_reply`` writes the codec's own replies, where it has them.

    Once the messages run out, the connection gets ``end`` (by default the peer going
    away). ``write`` may stand in for the socket (an async callable, to block or fail it);
    by default what is written is recorded. ``gone`` is the transport's notice that the
    peer went away, done while messages may still be unread (``ConnectionDriver``).
    ``mark_finalize``: as a front-end that tells which finals a finalize forced
    (``WsCodec.mark_finalize``). ``interruptible``: as the driver's argument (by default,
    as the shells do: every WebSocket mode, not gRPC's); a receive cancelled in a pause
    leaves the rest of the pause for the next one, as a socket would.
    """
    outcome: Outcome[Any] = Outcome()
    messages = iter(inbound)
    loop = asyncio.get_running_loop()
    resume_at: float | None = None  # the pause under way ends then

    async def receive() -> Input | None:
        nonlocal resume_at
        await asyncio.sleep(0)  # a real receive yields to the loop too
        while True:
            if resume_at is not None:
                await asyncio.sleep(max(0.0, resume_at - loop.time()))
                resume_at = None
            message = next(messages, _END)
            if message is _END:
                return end or Disconnected()
            if not isinstance(message, Pause):
                break
            resume_at = loop.time() + message.seconds
        try:
            return decode(message)
        except ClientError as error:
            return Invalid(error)

    async def record(item: Any) -> None:
        outcome.sent.append(item)

    outbox: Outbox[Any] = Outbox(
        services.max_pending_events,
        encode,
        functools.partial(services.event_sent, route),
        "test",
        dropped=functools.partial(services.interim_dropped, route),
        encode_reply=encode_reply,
    )
    outbox.start(write or record)
    driver = ConnectionDriver(
        services,
        route,
        mode,
        receive,
        outbox,
        limits=services.limits,
        principal=principal,
        gone=gone,
        mark_finalize=mark_finalize,
        interruptible=mode is not GRPC if interruptible is None else interruptible,
    )
    try:
        outcome.close = await driver.run()
        await outbox.close()
    finally:
        outbox.cancel()
    return outcome
