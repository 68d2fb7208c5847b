"""Streaming a whole file, as a live source would, and what came back: ``StreamResult``.

:func:`play` drives one :class:`~streamer.client.stream.Stream` with a file's audio, in
chunks, paced in real time when asked, and records every event (its v1 JSON object) with
its arrival time. ``client.websocket`` and ``client.grpc`` wrap it for their transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamer.client.audio import LoadedAudio
from streamer.client.errors import StreamClosed, StreamFailed, StreamRefused
from streamer.client.stream import Stream, build_start
from streamer.codecs.v1_json import event_from_dict
from streamer.events import Event

EventHandler = Callable[[dict[str, Any]], None]
"""Called with each event's v1 JSON object as it arrives."""


@dataclass(frozen=True, slots=True)
class FileOptions:
    """How a whole file is streamed, on either wire (``client.websocket``, ``client.grpc``).

    ``chunk_bytes`` is the size of each message (default: 100 ms of audio); ``real_time``
    paces them as a live source would. ``interim``, ``trace_id`` and ``extra_start`` (merged
    last) make the ``start``. ``on_event`` sees each event as it arrives.
    ``results_timeout`` bounds the wait after the audio is sent (None: no bound);
    ``open_timeout``, the connection and the wait for ``ready``.
    """

    chunk_bytes: int | None = None
    real_time: bool = False
    interim: bool = False
    trace_id: str | None = None
    extra_start: Mapping[str, Any] | None = None
    on_event: EventHandler | None = None
    results_timeout: float | None = 60.0
    open_timeout: float = 10.0

    def start(self, audio: LoadedAudio) -> dict[str, Any]:
        """The fields of the ``start`` request for ``audio``."""
        return build_start(
            audio.format,
            interim_results=self.interim,
            trace_id=self.trace_id,
            extra=self.extra_start,
        )


DEFAULTS = FileOptions()
"""The options of a file streamed with none given."""


@dataclass(slots=True)
class StreamResult:
    """What one stream got back, and when: times are seconds since its ``start`` was sent."""

    events: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """When each event arrived, one per event."""
    connect_seconds: float | None = None
    """Time to open the connection (``stream_file`` only)."""
    ready_seconds: float | None = None
    last_audio_seconds: float | None = None
    """When the last audio frame was sent."""
    stop_seconds: float | None = None
    done_seconds: float | None = None
    bytes_sent: int = 0
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def segments(self) -> list[dict[str, Any]]:
        return self.of_type("segment")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.of_type("error")

    @property
    def ready(self) -> dict[str, Any] | None:
        found = self.of_type("ready")
        return found[0] if found else None

    @property
    def done(self) -> dict[str, Any] | None:
        found = self.of_type("done")
        return found[-1] if found else None

    @property
    def typed_events(self) -> list[Event]:
        """The events as :mod:`streamer.events` types (those this client knows)."""
        return [e for e in map(event_from_dict, self.events) if e is not None]

    @property
    def ok(self) -> bool:
        """The stream ran to ``done`` without an error event."""
        return self.done is not None and not self.errors


async def send_audio(
    write: Callable[[memoryview], Awaitable[None]],
    audio: LoadedAudio,
    chunk_bytes: int,
    real_time: bool,
    receiver: asyncio.Future[Any],
    result: StreamResult,
    t0: float,
) -> None:
    """Write the audio in chunks of ``chunk_bytes``, paced in real time when asked.

    Stops early once ``receiver`` is done (the stream was refused, or the connection is
    gone). In real time it returns when the audio has played out, as a live source would.
    """
    loop = asyncio.get_running_loop()
    view = memoryview(audio.data)
    rate = audio.bytes_per_second
    begin = loop.time()
    for offset in range(0, len(view), chunk_bytes):
        if receiver.done():
            return
        if real_time:
            # Against the start time, not the previous send, so sleeps do not drift.
            delay = begin + offset / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = view[offset : offset + chunk_bytes]
        await write(frame)
        result.bytes_sent += len(frame)
    result.last_audio_seconds = loop.time() - t0
    if real_time:
        # A live source ends when its audio has played out, not when its last chunk begins.
        delay = begin + len(view) / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


async def play(
    open_stream: Callable[[], Awaitable[Stream]],
    audio: LoadedAudio,
    options: FileOptions = DEFAULTS,
    *,
    disconnect: bool = True,
) -> StreamResult:
    """Open a stream, send ``audio``, ``stop``, and collect its events until ``done``.

    A refused start is a result, not an exception: its ``error`` event (if the server sent
    one) is the only event, and ``close_code`` says how the connection or call ended.
    ``StreamFailed`` when ``options.results_timeout`` runs out after the audio is sent.
    """
    chunk_bytes, real_time = options.chunk_bytes, options.real_time
    on_event, results_timeout = options.on_event, options.results_timeout
    if chunk_bytes is None:
        chunk_bytes = audio.chunk_bytes()
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    loop = asyncio.get_running_loop()
    result = StreamResult()
    t0 = loop.time()

    def record(message: dict[str, Any]) -> None:
        now = loop.time() - t0
        result.events.append(message)
        result.arrivals.append(now)
        kind = message.get("type")
        if kind == "ready":
            result.ready_seconds = now
        elif kind == "done":
            result.done_seconds = now
        if on_event is not None:
            on_event(message)

    try:
        stream = await open_stream()
    except StreamRefused as refusal:
        if refusal.message is not None:
            record(refusal.message)
        result.close_code = refusal.close_code
        result.close_reason = refusal.close_reason
        return result
    record(stream.ready_message)

    async def receive() -> None:
        while (received := await stream.receive()) is not None:
            record(received.message)

    receiver = asyncio.create_task(receive(), name="client-receive")
    try:
        try:
            await send_audio(stream.send, audio, chunk_bytes, real_time, receiver, result, t0)
            if not receiver.done():
                await stream.stop(disconnect=disconnect)
                result.stop_seconds = loop.time() - t0
        except StreamClosed:
            pass  # the receiver sees the end too; the result tells how the stream ended
        try:
            await asyncio.wait_for(receiver, results_timeout)
        except TimeoutError:
            raise StreamFailed(f"no done from the server within {results_timeout} s") from None
    finally:
        receiver.cancel()
        await stream.close()
    result.close_code = stream.close_code
    result.close_reason = stream.close_reason
    return result
