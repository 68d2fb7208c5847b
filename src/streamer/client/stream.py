"""One stream as a Python caller sees it, whatever carries it.

A :class:`Stream` is opened by sending the start and waiting for ``ready``; it then takes
audio (:meth:`Stream.send`), ``finalize`` and ``stop``, and yields typed events
(:mod:`streamer.events`) until ``done``. The transport sits behind a :class:`Wire`, which
moves v1 JSON objects (as dicts) and audio; ``client.websocket`` and ``client.grpc`` hold
the two wires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from streamer.client.errors import StreamClosed, StreamFailed, StreamRefused
from streamer.codecs.v1_json import event_from_dict
from streamer.events import Done, Event, Ready, StreamError

Request = Literal["finalize", "keepalive", "stop"]


class Wire(Protocol):
    """One stream's messages on one transport: v1 JSON objects out and in, and audio."""

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code or gRPC status number, once the connection or call ended."""

    @property
    def close_reason(self) -> str: ...

    async def send_start(self, start: Mapping[str, Any]) -> None:
        """Send the ``start`` request (its fields, without ``"request"``)."""

    async def send_audio(self, data: bytes | bytearray | memoryview) -> None:
        """Send audio; ``StreamClosed`` when the connection or call is over."""

    async def send_request(self, request: Request, *, disconnect: bool = False) -> None:
        """Send ``finalize``, ``keepalive`` or ``stop``; ``StreamClosed`` as for audio."""

    async def receive(self) -> dict[str, Any] | None:
        """The next event as its v1 JSON object, or None once the connection or call ended."""

    async def close(self) -> None:
        """Release the stream: after ``done`` or a refusal, wait for the server's end (the
        close handshake, the call's status); before, abort it."""


def build_start(
    format: Mapping[str, Any],
    *,
    interim_results: bool = False,
    interim_interval: float | None = None,
    vad: Mapping[str, Any] | None = None,
    trace_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of a ``start`` request (``docs/protocol.md``); ``extra`` is merged last."""
    start: dict[str, Any] = {"format": dict(format), "interim_results": interim_results}
    if interim_interval is not None:
        start["interim_interval"] = interim_interval
    if vad is not None:
        start["vad"] = dict(vad)
    if trace_id is not None:
        start["trace_id"] = trace_id
    if extra:
        start.update(extra)
    return start


@dataclass(frozen=True, slots=True)
class Received:
    """One event as it arrived: its v1 JSON object, and the typed event (None for a type
    this client does not know, which clients must ignore)."""

    message: dict[str, Any]
    event: Event | None


def _decode(message: dict[str, Any]) -> Event | None:
    try:
        return event_from_dict(message)
    except (KeyError, TypeError, ValueError) as error:
        raise StreamFailed(f"the server sent a malformed event ({error!r}): {message}") from None


def _ended(wire: Wire) -> str:
    code = wire.close_code if wire.close_code is not None else "none"
    reason = f": {wire.close_reason}" if wire.close_reason else ""
    return f"code {code}{reason}"


class Stream:
    """A running stream: send audio, ``finalize`` and ``stop``; iterate its typed events.

    Iteration ends after :class:`~streamer.events.Done`, or when the server ends the
    connection or call (then :attr:`done` is None and :attr:`close_code` says how). Read
    events while sending (from another task, say): a client that does not read is
    disconnected by the server (``slow_consumer``).
    """

    def __init__(self, wire: Wire, ready: Ready, ready_message: dict[str, Any]) -> None:
        self._wire = wire
        self.ready = ready
        """The ``ready`` event: session id, model, its sample rate, channels, trace id."""
        self.ready_message = ready_message
        self.done: Done | None = None
        """The ``done`` event, once it arrived."""
        self._stopped = False
        self._ended = False

    @classmethod
    async def open(
        cls, wire: Wire, start: Mapping[str, Any], *, ready_timeout: float | None = 10.0
    ) -> Stream:
        """Send ``start`` and wait for ``ready`` (at most ``ready_timeout`` seconds).

        ``StreamRefused`` when the server answers with an error or ends the connection or
        call first (the wire is closed then); ``StreamFailed`` when nothing comes in time.
        """
        message: dict[str, Any] | None = None
        event: Event | None = None
        try:
            async with asyncio.timeout(ready_timeout):
                await wire.send_start(start)
                while (message := await wire.receive()) is not None:
                    if (event := _decode(message)) is not None:
                        break  # the first event this client knows
        except StreamClosed:
            message = event = None
        except TimeoutError:
            await wire.close()
            raise StreamFailed(f"no ready from the server within {ready_timeout} s") from None
        except StreamFailed:
            await wire.close()
            raise
        if isinstance(event, Ready) and message is not None:
            return cls(wire, event, message)
        await wire.close()
        if isinstance(event, StreamError):
            raise StreamRefused(
                f"the server refused the stream: {event.code}: {event.message}",
                error=event,
                message=message,
                close_code=wire.close_code,
                close_reason=wire.close_reason,
            )
        if event is not None:
            raise StreamFailed(f"the server sent {event.kind} before ready")
        raise StreamRefused(
            f"the server ended the stream ({_ended(wire)}) before it was ready",
            close_code=wire.close_code,
            close_reason=wire.close_reason,
        )

    @property
    def session_id(self) -> str:
        return self.ready.session_id

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code or gRPC status number, once the connection or call ended."""
        return self._wire.close_code

    @property
    def close_reason(self) -> str:
        return self._wire.close_reason

    def _check_open(self, what: str) -> None:
        if self._stopped:
            raise StreamClosed(f"cannot send {what}: the stream is stopped")

    async def send(self, audio: bytes | bytearray | memoryview) -> None:
        """Send audio: little-endian interleaved samples in the start's format, any size."""
        self._check_open("audio")
        await self._wire.send_audio(audio)

    async def finalize(self) -> None:
        """Ask for final results for all audio so far; the stream goes on."""
        self._check_open("finalize")
        await self._wire.send_request("finalize")

    async def keepalive(self) -> None:
        self._check_open("keepalive")
        await self._wire.send_request("keepalive")

    async def stop(self, *, disconnect: bool = True) -> None:
        """End the stream: the server flushes every open result, then sends ``done``.

        On a WebSocket, ``disconnect=False`` keeps the connection open for another stream
        (``client.websocket.open_stream``); a gRPC call always ends.
        """
        self._check_open("stop")
        self._stopped = True
        await self._wire.send_request("stop", disconnect=disconnect)

    async def receive(self) -> Received | None:
        """The next event with its wire form, or None after ``done`` or the end."""
        if self._ended:
            return None
        message = await self._wire.receive()
        if message is None:
            self._ended = True
            return None
        event = _decode(message)
        if isinstance(event, Done):
            self.done = event
            self._ended = True
        return Received(message, event)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Event:
        """The next typed event; events of types this client does not know are skipped."""
        while (received := await self.receive()) is not None:
            if received.event is not None:
                return received.event
        raise StopAsyncIteration

    async def close(self) -> None:
        """Release the stream: after ``done``, wait for the server to end the connection or
        call; before, abort the stream."""
        await self._wire.close()


class Opening:
    """What ``connect`` returns: await it for a :class:`Stream`, or use ``async with``,
    which closes the stream on the way out."""

    def __init__(self, opener: Callable[[], Awaitable[Stream]]) -> None:
        self._opener = opener
        self._stream: Stream | None = None

    def __await__(self) -> Generator[Any, None, Stream]:
        return self._opener().__await__()

    async def __aenter__(self) -> Stream:
        self._stream = await self._opener()
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            await self._stream.close()
