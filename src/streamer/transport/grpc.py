"""The gRPC transport: ``streamer.v1.Streamer`` on ``grpc.aio``, beside health and reflection.

Like the WebSocket transport it holds no protocol logic: the session decides what a request
means, ``transport.common`` opens and ends streams, the pipeline turns audio into events.
This module moves messages and turns refusals into statuses. One call carries one stream.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from streamer.errors import ClientError, ErrorCode, InvalidMessage
from streamer.pipeline import Event, Route, StreamPipeline
from streamer.protocol.messages import (
    ErrorEvent,
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
    parse_client_message,
)
from streamer.protocol.session import Audio, Command, Session, State
from streamer.services import Services
from streamer.transport.common import end_stream, open_stream
from streamer.transport.grpc_codec import config_to_start, event_to_proto
from streamer.transport.limits import grpc_server_options
from streamer.transport.outbox import Outbox
from streamer.transport.proto import streamer_v1_pb2 as pb
from streamer.transport.proto import streamer_v1_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Streamer"].full_name
"""``streamer.v1.Streamer``."""
ERROR_CODE_KEY = "streamer-error-code"
"""Trailing metadata that carries the protocol's error code when a call ends in error."""
TRACEPARENT_KEY = "traceparent"

STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_JSON: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_MESSAGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_FORMAT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_STARTED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.ALREADY_STARTED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.MESSAGE_TOO_BIG: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.SLOW_CONSUMER: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL_ERROR: grpc.StatusCode.INTERNAL,
}
"""The status that ends a call, by error code (the WebSocket's close codes, as statuses)."""

_SHUTTING_DOWN = "the server is shutting down; connect to another instance"


class _End(Exception):
    """The call is over with an error status, told first as an ``error`` event (as on the
    WebSocket, and so that clients that lose the status to a racing write still see it)."""

    def __init__(self, code: ErrorCode, message: str, *, in_band: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_band = in_band


class GrpcStream:
    """One call: a config, then audio until ``stop`` (or the end of the requests)."""

    def __init__(self, context: Any, route: Route, services: Services) -> None:
        self.context = context
        self.route = route
        self.services = services
        self.session = Session()
        self.pipeline: StreamPipeline | None = None
        # gRPC's flow control holds the writer; past the backlog the call ends (slow_consumer).
        self._outbox: Outbox[pb.StreamEvent] = Outbox(
            services.settings.server.max_pending_events,
            event_to_proto,
            functools.partial(services.event_sent, route),
            "grpc",
        )

    def emit(self, event: Event) -> None:
        self._outbox.put(event)

    async def run(self) -> None:
        self._outbox.start(self.context.write)
        try:
            end = await self._serve_guarded()
            if end is not None and end.in_band:
                self.emit(ErrorEvent(code=end.code, message=end.message))
            await self._outbox.close()
        finally:
            self._outbox.cancel()
        if end is not None:
            self.context.set_code(STATUS[end.code])
            self.context.set_details(end.message)
            self.context.set_trailing_metadata(((ERROR_CODE_KEY, end.code.value),))

    async def _serve_guarded(self) -> _End | None:
        """Serve the call; on any way out, withdraw the stream's remaining work at once."""
        services = self.services
        services.connections.add(self)
        try:
            await self._serve()
        except _End as end:
            return end
        except Exception:
            log.exception("gRPC stream failed")
            return _End(ErrorCode.INTERNAL_ERROR, "internal server error")
        finally:  # also when the client cancels: the handler task is cancelled
            services.connections.discard(self)
            if self.pipeline is not None:
                pipeline, self.pipeline = self.pipeline, None
                await end_stream(services, self.route, pipeline, flush=False)
        return None

    async def _serve(self) -> None:
        services = self.services
        draining = asyncio.ensure_future(services.draining.wait())
        expired = asyncio.ensure_future(services.drain_expired.wait())
        receive: asyncio.Future[Any] | None = None
        try:
            while True:
                if self._outbox.slow:
                    raise _End(ErrorCode.SLOW_CONSUMER, "the client is not reading its events")
                if receive is None:
                    receive = asyncio.ensure_future(self.context.read())
                drain = expired if self.pipeline is not None else draining
                await asyncio.wait({receive, drain}, return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    if self.pipeline is None:
                        raise _End(ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN)
                    await self._finish()  # finals and done first, then the status
                    raise _End(ErrorCode.SHUTTING_DOWN, _SHUTTING_DOWN, in_band=False)
                message = receive.result()
                receive = None
                if message is grpc.aio.EOF:
                    await self._finish()  # the end of the requests stops the stream
                    return
                if await self._handle(message):
                    return
        finally:
            for future in (receive, draining, expired):
                if future is not None:
                    future.cancel()

    async def _handle(self, message: pb.StreamRequest) -> bool:
        """Apply one request; True when the call is done."""
        try:
            command = self.session.apply(self._command(message))
        except ClientError as error:
            raise _End(error.code, error.message) from None
        if isinstance(command, Audio):
            assert self.pipeline is not None
            self.services.bytes_in(self.route, len(command.data))
            await self.pipeline.feed(command.data)
        elif isinstance(command, StartRequest):
            try:
                self.pipeline = open_stream(self.services, self.route, command, self.emit)
            except ClientError as error:
                raise _End(error.code, error.message) from None
        elif isinstance(command, FinalizeRequest):
            assert self.pipeline is not None
            await self.pipeline.finalize()
        elif isinstance(command, StopRequest):
            await self._finish()
            return self.session.state is State.CLOSED
        return False

    def _command(self, message: pb.StreamRequest) -> Command:
        """The session command a request stands for (its config parsed as a ``start``)."""
        kind = message.WhichOneof("request")
        if kind == "audio":
            return Audio(message.audio)
        if kind == "config":
            start = config_to_start(message.config, self._traceparent())
            # The WebSocket's own parser: the same defaults, checks and error messages.
            return parse_client_message(json.dumps(start))
        if kind == "finalize":
            return FinalizeRequest(request="finalize")
        if kind == "stop":
            return StopRequest(request="stop", disconnect=True)  # one call, one stream
        if kind == "keepalive":
            return KeepaliveRequest(request="keepalive")
        raise InvalidMessage("the request sets none of config, audio, finalize, stop, keepalive")

    def _traceparent(self) -> str | None:
        for key, value in self.context.invocation_metadata() or ():
            if key == TRACEPARENT_KEY and isinstance(value, str):
                return value
        return None

    async def _finish(self) -> None:
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await end_stream(self.services, self.route, pipeline, flush=True)


class StreamerServicer:
    """``streamer.v1.Streamer``: one RPC per route, each call one stream."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def Simple(self, requests: Any, context: Any) -> None:
        await GrpcStream(context, Route.SIMPLE, self._services).run()

    async def Segmented(self, requests: Any, context: Any) -> None:
        await GrpcStream(context, Route.SEGMENTED, self._services).run()


class GrpcServer:
    """The process's gRPC server: the streaming service, health and reflection.

    Health reports SERVING for the whole server ("") and for ``streamer.v1.Streamer`` until
    the server starts draining, then NOT_SERVING.
    """

    def __init__(self, services: Services, host: str, port: int) -> None:
        self.services = services
        max_message = services.settings.server.max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                # A port in use is an error at start, not a port shared with another process.
                ("grpc.so_reuseport", 0),
                *grpc_server_options(services.settings.server),
            ]
        )
        pb_grpc.add_StreamerServicer_to_server(StreamerServicer(services), self.server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self.port: int = self.server.add_insecure_port(f"{address}:{port}")
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        self._watch = asyncio.create_task(self._not_serving_when_draining(), name="grpc-health")

    async def _not_serving_when_draining(self) -> None:
        await self.services.draining.wait()
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop taking calls; calls still open after ``grace`` seconds are cancelled."""
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(services: Services, host: str, port: int) -> GrpcServer:
    """Bind and start the gRPC server on the running loop; ``port`` 0 picks a free one."""
    server = GrpcServer(services, host, port)
    await server.start()
    log.info("gRPC listening on %s:%d", host, server.port)
    return server
