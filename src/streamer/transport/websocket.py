"""The WebSocket transport: adapts one Starlette WebSocket to a session and its pipelines.

It holds no protocol logic: the session decides what a message means, the pipeline turns
audio into events, and this module moves bytes and applies close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from streamer.errors import (
    ClientError,
    CloseCode,
    ErrorCode,
    Overloaded,
    ShuttingDown,
)
from streamer.pipeline import Event, Route, StreamPipeline
from streamer.protocol.messages import (
    ErrorEvent,
    FinalizeRequest,
    StartRequest,
    StopRequest,
    encode_event,
)
from streamer.protocol.session import Audio, Session, State
from streamer.services import Services
from streamer.transport.common import end_stream, open_stream
from streamer.transport.outbox import Outbox

log = logging.getLogger(__name__)


class _Closed(Exception):
    """The connection is over; carries the close code and reason to send."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    """One WebSocket connection: any number of start/stop cycles."""

    def __init__(self, ws: WebSocket, route: Route, services: Services) -> None:
        self.ws = ws
        self.route = route
        self.services = services
        self.session = Session()
        self.pipeline: StreamPipeline | None = None
        self._outbox: Outbox[str] = Outbox(
            services.settings.server.max_pending_events,
            encode_event,
            functools.partial(services.event_sent, route),
            "ws",
        )

    def emit(self, event: Event) -> None:
        self._outbox.put(event)

    async def run(self) -> None:
        services = self.services
        await self.ws.accept()
        self._trace = services.open_connection(self.route, self.ws.headers)
        self._outbox.start(self.ws.send_text)
        services.connections.add(self)
        close = _Closed(CloseCode.NORMAL)
        try:
            await self._serve()
        except _Closed as closing:
            close = closing
        except WebSocketDisconnect:
            close = _Closed(0)
        except Exception:
            log.exception("connection failed")
            self.emit(ErrorEvent(code=ErrorCode.INTERNAL_ERROR, message="internal server error"))
            close = _Closed(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            services.connections.discard(self)
            if self.pipeline is not None:
                pipeline, self.pipeline = self.pipeline, None
                await end_stream(
                    services, self.route, pipeline, flush=False, outcome_if_dropped=_outcome(close)
                )
            self._trace.end(close.code)
        await self._outbox.close()
        if close.code:
            with contextlib.suppress(Exception):
                await self.ws.close(close.code, close.reason)

    async def _serve(self) -> None:
        services = self.services
        # Watched for the whole connection: one task each, not one per message.
        draining = asyncio.ensure_future(services.draining.wait())
        expired = asyncio.ensure_future(services.drain_expired.wait())
        receive: asyncio.Future[Any] | None = None
        try:
            while True:
                if self._outbox.slow:
                    raise _Closed(CloseCode.POLICY_VIOLATION, ErrorCode.SLOW_CONSUMER)
                if services.draining.is_set() and self.pipeline is None:
                    raise _Closed(CloseCode.GOING_AWAY, "server shutting down")
                if receive is None:
                    receive = asyncio.ensure_future(self.ws.receive())
                drain = expired if self.pipeline is not None else draining
                await asyncio.wait({receive, drain}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    if self.pipeline is not None and services.drain_expired.is_set():
                        await self._finish_stream()
                        raise _Closed(CloseCode.GOING_AWAY, "server shutting down")
                    continue
                message = receive.result()
                receive = None
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(int(str(message.get("code", 1000))))
                await self._handle(message)
        finally:
            for future in (receive, draining, expired):
                if future is not None:
                    future.cancel()

    async def _handle(self, message: dict[str, object]) -> None:
        text = message.get("text")
        data = message.get("bytes")
        try:
            if isinstance(data, bytes | bytearray):
                command = self.session.receive_bytes(bytes(data))
            elif isinstance(text, str):
                command = self.session.receive_text(text)
            else:
                return
            await self._apply(command)
        except ClientError as error:
            self.emit(ErrorEvent(code=error.code, message=error.message))
            if isinstance(error, Overloaded):
                raise _Closed(CloseCode.TRY_AGAIN_LATER, ErrorCode.OVERLOADED) from None
            if isinstance(error, ShuttingDown):
                raise _Closed(CloseCode.GOING_AWAY, ErrorCode.SHUTTING_DOWN) from None

    async def _apply(self, command: object) -> None:
        if isinstance(command, Audio):
            assert self.pipeline is not None
            self.services.bytes_in(self.route, len(command.data))
            await self.pipeline.feed(command.data)
        elif isinstance(command, StartRequest):
            self._start(command)
        elif isinstance(command, FinalizeRequest):
            assert self.pipeline is not None
            await self.pipeline.finalize()
        elif isinstance(command, StopRequest):
            await self._finish_stream()
            if self.session.state is State.CLOSED:
                raise _Closed(CloseCode.NORMAL)

    def _start(self, request: StartRequest) -> None:
        try:
            self.pipeline = open_stream(self.services, self.route, request, self.emit, self._trace)
        except ClientError:
            self.session.state = State.IDLE  # the start was refused: no stream is open
            raise

    async def _finish_stream(self) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            return
        try:
            await end_stream(self.services, self.route, pipeline, flush=True)
        finally:
            self.pipeline = None
            if self.session.state is State.STREAMING:  # ended by the drain, not by a stop
                self.session.state = State.IDLE


def _outcome(close: _Closed) -> str:
    """How a stream that was still open when its connection ended, ended."""
    if close.code == 0:
        return "disconnected"
    if close.reason == ErrorCode.SLOW_CONSUMER:
        return "slow_consumer"
    if close.code in (CloseCode.GOING_AWAY, CloseCode.NORMAL):
        return "shutdown"  # drained, or the connection's task was cancelled
    return "error"


async def serve_websocket(ws: WebSocket, route: Route, services: Services) -> None:
    """Entry point for one WebSocket connection on ``route``."""
    await Connection(ws, route, services).run()
