"""The one async driver of a connection, whatever its transport.

It waits for the next inbound message (decoded by the transport's codec) or a runtime
notice (draining, the drain's expiry, the open stream breaking, the outbox filling), feeds
the connection machine, and carries out the machine's actions on the stream through
``transport.common``. It returns the ``Close`` that ends the connection; the transport's
shell applies it in its own terms (a close code, a status).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streamer.errors import ClientError
from streamer.events import Event, StreamError
from streamer.observability.tracing import ConnectionTrace
from streamer.pipeline import Route, StreamPipeline
from streamer.policy import ANONYMOUS, Principal
from streamer.protocol.connection import (
    AbortStream,
    Action,
    Close,
    ConnectionMachine,
    Crashed,
    DrainExpired,
    DrainStarted,
    EmitError,
    Feed,
    Finalize,
    FinishStream,
    Input,
    Limits,
    Mode,
    OpenStream,
    OutboxFull,
    StreamFailed,
    StreamRefused,
    Tick,
)
from streamer.services import Services
from streamer.transport.common import end_stream, open_stream
from streamer.transport.outbox import Outbox

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[Input | None]]
"""The next input from the peer (None: a message that means nothing, such as a ping)."""


def limits_of(services: Services) -> Limits:
    """The connection limits the settings ask for."""
    return Limits(idle_seconds=services.settings.stream.idle_seconds)


class ConnectionDriver:
    """Runs one connection: inputs into the machine, its actions onto the stream."""

    def __init__(
        self,
        services: Services,
        route: Route,
        mode: Mode,
        receive: Receive,
        outbox: Outbox[Any],
        *,
        principal: Principal = ANONYMOUS,
        trace: ConnectionTrace | None = None,
        mark_finalize: bool = False,
    ) -> None:
        self.services = services
        self.route = route
        self.machine = ConnectionMachine(mode, limits_of(services), self._clock())
        self.principal = principal
        self._receive = receive
        self._outbox = outbox
        self._trace = trace
        self._mark_finalize = mark_finalize
        self.stream: StreamPipeline | None = None

    def emit(self, event: Event) -> None:
        self._outbox.put(event)

    async def run(self) -> Close:
        """Serve the connection to its end; the open stream, if any, is over on return."""
        services = self.services
        services.connections.add(self)
        try:
            return await self._serve()
        except Exception:
            log.exception("connection failed")
            return await self._crashed()
        finally:  # also when cancelled: the stream's work is withdrawn at once
            services.connections.discard(self)
            if self.stream is not None:
                await self._abort("disconnected")

    async def _crashed(self) -> Close:
        try:
            close = await self._step(Crashed())
        except Exception:
            log.exception("connection failed while ending")
            close = None
        return close or Close(send=False)

    async def _serve(self) -> Close:
        services = self.services
        # Watched for the whole connection: one future each, not one per message.
        draining = asyncio.ensure_future(services.draining.wait())
        expired = asyncio.ensure_future(services.drain_expired.wait())
        receive: asyncio.Future[Input | None] | None = None
        told_draining = False
        try:
            while True:
                if self._outbox.slow and (close := await self._step(OutboxFull())):
                    return close
                if services.draining.is_set() and not told_draining:
                    told_draining = True
                    if close := await self._step(DrainStarted()):
                        return close
                stream = self.stream
                if stream is not None and stream.failed.done():
                    if close := await self._step(StreamFailed()):
                        return close
                    continue
                if stream is not None and services.drain_expired.is_set():
                    if close := await self._step(DrainExpired()):
                        return close
                    continue
                if receive is None:
                    receive = asyncio.ensure_future(self._receive())
                waits: set[asyncio.Future[Any]] = {receive}
                if not told_draining:
                    waits.add(draining)
                if stream is not None:
                    waits.add(expired)
                    waits.add(stream.failed)
                timeout = None
                if (deadline := self.machine.deadline()) is not None:
                    timeout = max(0.0, deadline - self._clock())
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    if timeout is not None and (close := await self._step(Tick())):
                        return close
                    continue
                message = receive.result()
                receive = None
                if message is not None and (close := await self._step(message)):
                    return close
        finally:
            for future in (receive, draining, expired):
                if future is not None:
                    future.cancel()

    @staticmethod
    def _clock() -> float:
        return asyncio.get_running_loop().time()

    async def _step(self, event: Input) -> Close | None:
        """Feed one input and carry out what it calls for; the ``Close``, if it ends the
        connection."""
        for action in self.machine.receive(event, self._clock()):
            if isinstance(action, Close):
                if action.tell and action.code is not None:
                    self.emit(StreamError(code=action.code, message=action.message))
                return action
            if isinstance(action, OpenStream):
                try:
                    self.stream = open_stream(
                        self.services,
                        self.route,
                        action.request,
                        self.emit,
                        self._trace,
                        principal=self.principal,
                        mark_finalize=self._mark_finalize,
                    )
                except ClientError as error:
                    return await self._step(StreamRefused(error))
            else:
                await self._act(action)
        return None

    async def _act(self, action: Action) -> None:
        stream = self.stream
        if isinstance(action, Feed):
            assert stream is not None
            self.services.bytes_in(self.route, len(action.data))
            await stream.feed(action.data)
        elif isinstance(action, Finalize):
            assert stream is not None
            await stream.finalize()
        elif isinstance(action, FinishStream):
            if stream is not None:
                self.stream = None
                await end_stream(self.services, self.route, stream, flush=True)
        elif isinstance(action, AbortStream):
            await self._abort(action.outcome)
        elif isinstance(action, EmitError):
            self.emit(StreamError(code=action.code, message=action.message))

    async def _abort(self, outcome: str) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            await end_stream(
                self.services, self.route, stream, flush=False, outcome_if_dropped=outcome
            )
