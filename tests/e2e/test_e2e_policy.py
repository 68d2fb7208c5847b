"""The connection policy on real sockets: a denial comes before any stream, on both
transports, with its documented status, and is counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import uvicorn
from conftest import HOST
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer.app import create_app
from streamer.client import load_audio, stream_file
from streamer.client.grpc import stream_file as grpc_stream_file
from streamer.config import Settings
from streamer.policy import ConnectionDenied, ConnectionRequest, Principal
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc
from streamer.services import Services
from streamer.transport.grpc import ERROR_CODE_KEY

pytestmark = pytest.mark.e2e

AUDIO = load_audio(Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "jfk.wav")


class KeyPolicy:
    """Lets in ``x-key: good``; ``x-key: banned`` is forbidden; anything else is unknown."""

    def __init__(self) -> None:
        self.seen: list[ConnectionRequest] = []

    def __call__(self, request: ConnectionRequest) -> Principal:
        self.seen.append(request)
        key = request.headers.get("x-key") or request.query.get("key")
        if key == "good":
            return Principal(name="good-client")
        if key == "banned":
            raise ConnectionDenied("this key is banned", status=403)
        raise ConnectionDenied("unknown key")


@dataclass
class Running:
    services: Services
    registry: CollectorRegistry
    policy: KeyPolicy
    port: int
    grpc_port: int


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[Running]:
    """The app with the key policy, served by uvicorn and gRPC on free ports."""
    policy = KeyPolicy()
    registry = CollectorRegistry()
    settings = Settings.model_validate(
        {"server": {"host": HOST, "grpc_port": 0}, "inference": {"workers": 2}}
    )
    app = create_app(settings, registry=registry, policy=policy)
    # No log settings: uvicorn would reconfigure the process's loggers for other tests.
    config = uvicorn.Config(app, host=HOST, port=0, lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 (uvicorn has no event for it)
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        services: Services = app.state.services
        yield Running(services, registry, policy, port, app.state.grpc_port)
    finally:
        server.should_exit = True
        await task


def refused(registry: CollectorRegistry, route: str, code: str) -> float:
    value = registry.get_sample_value(
        "streamer_connections_refused_total", {"route": route, "code": code}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("key", "status", "code"), [(None, 401, "unauthorized"), ("banned", 403, "forbidden")]
)
async def test_a_denied_websocket_gets_its_http_status_before_the_upgrade(
    key: str | None, status: int, code: str
) -> None:
    async with running() as srv:
        headers = {"x-key": key} if key else {}
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                f"ws://{HOST}:{srv.port}/api/v1/segmented", additional_headers=headers
            ):
                pass
        response = info.value.response
        assert response.status_code == status
        body = json.loads(response.body or b"{}")
        assert body["code"] == code and body["message"]
        assert srv.services.admission.live_streams == 0
        assert refused(srv.registry, "segmented", code) == 1
        # The policy saw the handshake; with a good key the same route serves a stream.
        assert srv.policy.seen[-1].route == "segmented"
        good = await stream_file(f"ws://{HOST}:{srv.port}/api/v1/segmented?key=good", AUDIO)
        assert good.ok and good.segments


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
        ("banned", grpc.StatusCode.PERMISSION_DENIED, "forbidden"),
    ],
)
async def test_a_denied_grpc_call_gets_its_status_before_any_stream(
    key: str | None, status: grpc.StatusCode, code: str
) -> None:
    async with running() as srv:
        target = f"{HOST}:{srv.grpc_port}"
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.StreamerStub(channel)
            metadata = (("x-key", key),) if key else ()
            call = stub.Simple(metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
        assert info.value.code() is status
        assert dict(info.value.trailing_metadata() or ())[ERROR_CODE_KEY] == code
        assert srv.services.admission.live_streams == 0
        assert refused(srv.registry, "simple", code) == 1
        assert srv.policy.seen[-1].transport == "grpc"
        good = await grpc_stream_file(target, AUDIO, metadata=(("x-key", "good"),))
        assert good.ok and good.segments
