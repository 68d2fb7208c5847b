"""The gRPC transport: ``streamer.v1.Streamer`` on ``grpc.aio``, beside health and reflection.

A shell like the WebSocket's: the connection machine decides what a request means and the
shared driver runs it; this module asks the policy, moves messages through the v1 protobuf
codec and turns the machine's close into a status. One call carries one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from streamer.codecs.v1_proto import decode_request, event_to_proto
from streamer.errors import ENDINGS, ClientError, ConnectionDenied, ErrorCode
from streamer.pipeline import Route
from streamer.policy import ConnectionRequest
from streamer.protocol.connection import GRPC
from streamer.protocol.inputs import EndOfInput, Input, Invalid
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc
from streamer.services import Services
from streamer.transport.driver import ConnectionDriver, unread_close
from streamer.transport.outbox import Outbox

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Streamer"].full_name
"""``streamer.v1.Streamer``."""
ERROR_CODE_KEY = "streamer-error-code"
"""Trailing metadata that carries the protocol's error code when a call ends in error."""
TRACEPARENT_KEY = "traceparent"
DENIAL_READ_SECONDS = 0.5
"""How long a denied call may take to deliver the message it is writing, before its status."""


def status_of(code: ErrorCode | None) -> grpc.StatusCode:
    """The status that ends a call for ``code`` (``errors.ENDINGS``)."""
    return grpc.StatusCode[ENDINGS[code].grpc_status]


def _metadata(context: Any) -> dict[str, str]:
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


async def serve_call(context: Any, route: Route, services: Services) -> None:
    """Serve one call (one stream) on ``route``."""
    metadata = _metadata(context)
    request = ConnectionRequest(route=route.value, transport="grpc", headers=metadata)
    try:
        principal = services.authorize(request)
    except ConnectionDenied as denied:
        # Take the config the client is writing first: grpc.aio clients whose write is
        # still under way when a call ends see INTERNAL, not the status (grpc/grpc#36066).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.read(), DENIAL_READ_SECONDS)
        context.set_trailing_metadata(((ERROR_CODE_KEY, denied.code.value),))
        await context.abort(status_of(denied.code), denied.message)
    traceparent = metadata.get(TRACEPARENT_KEY)
    # gRPC's flow control holds the writer; past the backlog the call ends (slow_consumer).
    outbox: Outbox[pb.StreamEvent] = Outbox(
        services.max_pending_events,
        event_to_proto,
        functools.partial(services.event_sent, route),
        "grpc",
        dropped=functools.partial(services.interim_dropped, route),
        grace=services.close_grace_seconds,
    )

    async def receive() -> Input | None:
        message = await context.read()
        if message is grpc.aio.EOF:
            return EndOfInput()
        try:
            return decode_request(message, traceparent)
        except ClientError as error:
            return Invalid(error)

    outbox.start(context.write)
    try:
        driver = ConnectionDriver(
            services, route, GRPC, receive, outbox, limits=services.limits, principal=principal
        )
        close = await driver.run()
        # A client that reads nothing gets no grace; one that did not read what was left
        # within it ends with slow_consumer, not OK.
        if close.code is not ErrorCode.SLOW_CONSUMER and await outbox.close():
            close = unread_close(services, route)
    finally:
        outbox.cancel()
    if close.code is not None:
        context.set_code(status_of(close.code))
        context.set_details(close.message)
        context.set_trailing_metadata(((ERROR_CODE_KEY, close.code.value),))


class StreamerServicer:
    """``streamer.v1.Streamer``: one RPC per route, each call one stream."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def Simple(self, requests: Any, context: Any) -> None:
        await serve_call(context, Route.SIMPLE, self._services)

    async def Segmented(self, requests: Any, context: Any) -> None:
        await serve_call(context, Route.SEGMENTED, self._services)


class GrpcServer:
    """The process's gRPC server: the streaming service, health and reflection.

    Health reports SERVING for the whole server ("") and for ``streamer.v1.Streamer`` until
    the server starts draining, then NOT_SERVING.
    """

    def __init__(
        self, services: Services, host: str, port: int, options: Sequence[tuple[str, int]] = ()
    ) -> None:
        """``options``: the server's channel arguments (message size, keepalive, caps)."""
        self.services = services
        self.server = grpc.aio.server(options=list(options))
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


async def start_grpc_server(
    services: Services, host: str, port: int, options: Sequence[tuple[str, int]] = ()
) -> GrpcServer:
    """Bind and start the gRPC server on the running loop; ``port`` 0 picks a free one."""
    server = GrpcServer(services, host, port, options)
    await server.start()
    log.info("gRPC listening on %s:%d", host, server.port)
    return server
