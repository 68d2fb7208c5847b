"""Connection-level limits, enforced below the application: in the uvicorn protocols and
in the gRPC server's channel arguments.

The WebSocket and gRPC transports see a connection only once its request is complete and
a message whole; what a peer can do before that (hold sockets open, send a request head a
byte at a time, split a message into a million fragments, stop answering pings) is bounded
here:

- ``LimitedHttpProtocol`` (uvicorn's httptools protocol): a connection over
  ``max_connections`` gets a canned 503 at once and is closed; a request head that is not
  complete ``handshake_timeout_seconds`` after the connection opened (or after its first
  byte, for later requests on a kept-alive connection) gets a 408 and the connection is
  closed.
- ``LimitedWebSocketProtocol`` (uvicorn's websockets sans-I/O protocol): a message is
  assembled in one buffer rather than as a list of fragments, so a message costs about its
  own size however it is framed; a text message over ``max_text_bytes``, a binary one over
  ``max_message_bytes`` or one in more than ``MAX_FRAGMENTS`` frames closes the connection
  with 1009. Incoming bytes are parsed in slices, so that a burst of tiny frames never
  holds more than a slice's worth of parsed frames at once. Whole messages are read ahead
  of the application up to ``READ_AHEAD_BYTES`` (uvicorn stops reading after each one), so
  that a peer that goes away with a backlog is noticed at once: the protocol resolves the
  scope's ``PEER_GONE`` future when the connection is lost, which the driver watches while
  it waits on a busy stream. An application may also take binary messages as they are
  parsed (the scope's ``BINARY_SINK``): a sink attached there is offered each binary
  message while nothing is queued ahead of it, and one it takes skips the queue and the
  application's wake-up. While reading is paused (the application is behind on the
  peer's data, where the answer to a ping waits too) the keepalive timeout does not fire:
  a peer that is sending is never timed out for the server's own backlog. A peer that
  goes on sending more than ``AFTER_CLOSE_BYTES`` after the server's close frame is no
  longer read (the close timeout ends it) rather than parsed until then. A peer that
  reads nothing cannot be sent a close frame: when one cannot be written and the peer has
  read nothing for ``CLOSE_WRITE_SECONDS``, or it is still unsent when the close timeout
  ends, the connection is aborted rather than left open on its unsent bytes.
- ``grpc_server_options``: keepalive pings (a peer that stops answering is dropped), the
  handshake timeout (a socket that never sends the HTTP/2 preface is closed) and the
  connection cap of the gRPC port.

The values come from the caller (``[server]``'s settings fit ``ConnectionLimits``); the
protocol classes carry them as class attributes, since uvicorn builds one protocol object
per connection from the class alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

__all__ = [
    "BINARY_SINK",
    "MAX_FRAGMENTS",
    "ConnectionLimits",
    "LimitedHttpProtocol",
    "LimitedWebSocketProtocol",
    "grpc_server_options",
    "uvicorn_protocols",
]

MAX_FRAGMENTS: Final = 4096
"""Frames one WebSocket message may be split into (a 1 MiB message in 256-byte pieces)."""
MESSAGE_TOO_BIG: Final = 1009
_SLICE: Final = 16384
"""Bytes handed to the WebSocket parser at a time."""
READ_AHEAD_BYTES: Final = 1 << 19
"""Bytes of whole messages read ahead of the application before reading pauses."""
MESSAGE_COST: Final = 256
"""Bytes a queued message counts for beyond its payload (its event's own size)."""
AFTER_CLOSE_BYTES: Final = 1 << 16
"""Bytes a peer may send after the server's close frame before it is no longer read."""
CLOSE_WRITE_SECONDS: Final = 5.0
"""Seconds the server waits, for its close frame, on a peer that reads nothing."""
PEER_GONE: Final = "streamer.peer_gone"
"""The scope extension: a future resolved when the connection is lost."""
BINARY_SINK: Final = "streamer.binary_sink"
"""The scope extension: ``attach(sink)`` (``attach(None)`` to detach). While one is
attached, each whole binary message with nothing queued ahead of it is first offered to
``sink(data)``; a sink that returns True has taken it, and it is not queued. A sink runs
in the protocol's callback: it must not raise."""


class ConnectionLimits(Protocol):
    """The limits this module enforces, as the caller holds them (``[server]``'s settings
    do): the transports read values, never the settings module."""

    @property
    def max_connections(self) -> int: ...
    @property
    def handshake_timeout_seconds(self) -> float: ...
    @property
    def max_text_bytes(self) -> int: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def grpc_keepalive_seconds(self) -> float: ...
    @property
    def grpc_keepalive_timeout_seconds(self) -> float: ...


def _response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n"
        b"\r\n" + body
    )


_TOO_MANY: Final = _response(b"503 Service Unavailable", b"too many connections\n")
_TOO_SLOW: Final = _response(b"408 Request Timeout", b"the request head took too long\n")


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap and a request-head deadline."""

    max_connections: ClassVar[int] = 0
    handshake_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            self._refused = True
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._start_head_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.handshake_timeout, self._head_expired)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TOO_SLOW)
            self.transport.close()


class LimitedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets sans-I/O protocol with bounded message assembly."""

    max_text_bytes: ClassVar[int] = 65536
    max_binary_bytes: ClassVar[int] = 1 << 20
    close_write_seconds: ClassVar[float] = CLOSE_WRITE_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._message = bytearray()
        self._fragments = 0
        self._refused = False
        self._ahead = 0
        """Bytes of messages queued for the application (with ``MESSAGE_COST`` each)."""
        self._costs: collections.deque[int] = collections.deque()
        self._after_close = 0
        self._gone: asyncio.Future[None] = self.loop.create_future()
        self._sink: Callable[[bytes], bool] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if hasattr(self, "scope"):
            self.scope["extensions"][PEER_GONE] = {"future": self._gone}
            self.scope["extensions"][BINARY_SINK] = {"attach": self._attach}

    def _attach(self, sink: Callable[[bytes], bool] | None) -> None:
        self._sink = sink

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._gone.done():
            self._gone.set_result(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.close_sent:
            self._after_close += len(data)
            if self._after_close > AFTER_CLOSE_BYTES:
                # Not read on: the close timeout ends it. Not closed now: unread data would
                # reset the connection, and the peer would lose the close frame.
                self.transport.pause_reading()
                return
        for start in range(0, len(data), _SLICE):
            if self._refused or self.transport.is_closing():
                return
            super().data_received(data[start : start + _SLICE])

    def handle_text(self, event: Frame) -> None:
        self._begin("text", event)

    def handle_bytes(self, event: Frame) -> None:
        self._begin("bytes", event)

    def handle_cont(self, event: Frame) -> None:
        self._add(event)

    def _begin(self, kind: Literal["text", "bytes"], event: Frame) -> None:
        self.curr_msg_data_type = kind
        self._message = bytearray()
        self._fragments = 0
        self._add(event)

    def _add(self, event: Frame) -> None:
        if self._refused or self.close_sent:
            return
        self._fragments += 1
        self._message += event.data
        text = self.curr_msg_data_type == "text"
        limit = self.max_text_bytes if text else self.max_binary_bytes
        if len(self._message) > limit:
            kind = "text" if text else "binary"
            self._refuse(f"{kind} message over {limit} bytes")
        elif self._fragments >= MAX_FRAGMENTS and not event.fin:
            self._refuse(f"message in more than {MAX_FRAGMENTS} fragments")
        elif event.fin:
            self.frames = [bytes(self._message)]
            self._message = bytearray()
            self.send_receive_event_to_app()

    def send_receive_event_to_app(self) -> None:
        """Queue the assembled message; pause reading only past ``READ_AHEAD_BYTES``."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past the close: read on until the peer's close reply arrives
        if self.curr_msg_data_type == "text":
            try:
                message: Any = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError:
                self.logger.info("invalid UTF-8 in a text message: closing with 1007")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            sink = self._sink
            if sink is not None and not self.queue.qsize() and sink(data):
                return
            message = {"type": "websocket.receive", "bytes": data}
        self.queue.put_nowait(message)
        self._costs.append(len(data) + MESSAGE_COST)
        self._ahead += self._costs[-1]
        if self._ahead > READ_AHEAD_BYTES and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if message["type"] == "websocket.receive" and self._costs:
            self._ahead -= self._costs.popleft()
        if self.read_paused and self._ahead <= READ_AHEAD_BYTES // 2:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: Any) -> None:
        if message["type"] != "websocket.close" or not self.handshake_complete:
            await super().send(message)
            return
        while not self.writable.is_set():  # the peer's buffers are full: is it reading?
            unsent = self.transport.get_write_buffer_size()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.writable.wait(), self.close_write_seconds)
            if not self.writable.is_set() and self.transport.get_write_buffer_size() >= unsent:
                self.logger.info("the peer reads nothing: aborting instead of closing")
                self.transport.abort()
                return
        await super().send(message)
        if self.close_timer is not None:  # the close timeout: abort what cannot be flushed
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_or_abort)

    def _close_or_abort(self) -> None:
        self.close_timer = None
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def keepalive_timeout(self) -> None:
        if self.read_paused and not self.transport.is_closing() and self.ping_timeout:
            # The pong may be waiting behind data the application has yet to read: the
            # peer is not silent, the server is behind. Wait another timeout.
            self.pong_timer = self.loop.call_later(self.ping_timeout, self.keepalive_timeout)
            return
        super().keepalive_timeout()

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self._message = bytearray()
        self.conn.fail(MESSAGE_TOO_BIG, reason)
        self.handle_parser_exception()


def uvicorn_protocols(
    server: ConnectionLimits,
) -> tuple[type[LimitedHttpProtocol], type[LimitedWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes for uvicorn, bound to these settings."""

    class Http(LimitedHttpProtocol):
        max_connections = server.max_connections
        handshake_timeout = server.handshake_timeout_seconds

    class WebSocket(LimitedWebSocketProtocol):
        max_text_bytes = server.max_text_bytes
        max_binary_bytes = server.max_message_bytes

    return Http, WebSocket


def uvicorn_ws_max_size(server: ConnectionLimits) -> int:
    """The size the WebSocket parser itself refuses (with 1009): the larger of the caps."""
    return max(server.max_message_bytes, server.max_text_bytes)


def grpc_server_options(server: ConnectionLimits) -> list[tuple[str, int]]:
    """Channel arguments of the gRPC server for keepalive, handshakes and the connection cap."""
    options = [
        ("grpc.keepalive_time_ms", round(server.grpc_keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", round(server.grpc_keepalive_timeout_seconds * 1000)),
        # The wait for any ping's answer, which otherwise defaults to a minute on its own.
        ("grpc.http2.ping_timeout_ms", round(server.grpc_keepalive_timeout_seconds * 1000)),
        # Keep pinging a call that sends nothing back, and idle connections too.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.server_handshake_timeout_ms", round(server.handshake_timeout_seconds * 1000)),
    ]
    if server.max_connections:
        options.append(("grpc.max_allowed_incoming_connections", server.max_connections))
    return options
