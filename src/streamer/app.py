"""The composition root: builds every part from settings and wires the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from streamer.config import Settings
from streamer.inference.model import Model, TestModel
from streamer.inference.pool import ThreadPool
from streamer.inference.scheduler import Scheduler
from streamer.pipeline import Route
from streamer.segmentation.vad import VadEngine
from streamer.services import Services
from streamer.transport.websocket import serve_websocket

log = logging.getLogger(__name__)


def build_model(settings: Settings) -> Model:
    """The model the settings name (only the test model is built in)."""
    return TestModel(settings.model)


def build_services(settings: Settings, model: Model | None = None) -> Services:
    """Create the shared parts; call inside a running event loop."""
    model = model or build_model(settings)
    inference = settings.inference
    scheduler = Scheduler(
        ThreadPool(model, inference.workers),
        sample_rate=model.sample_rate,
        max_batch=min(inference.max_batch, model.max_batch_size),
        max_wait=inference.max_wait_ms / 1000,
        deadline=inference.deadline_seconds,
    )
    return Services(settings=settings, model=model, scheduler=scheduler, vad=VadEngine())


async def drain(services: Services) -> None:
    """Refuse new streams, give open ones ``drain_seconds`` to end, then end them (1001)."""
    services.draining.set()
    deadline = services.settings.server.drain_seconds
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while services.live_streams and loop.time() < until:  # noqa: ASYNC110 (counts, not events)
        await asyncio.sleep(0.05)
    services.drain_expired.set()
    until = loop.time() + 10.0
    while services.connections and loop.time() < until:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def create_app(settings: Settings | None = None, model: Model | None = None) -> Starlette:
    """The ASGI application; ``app.state.services`` exists while the lifespan runs."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = build_services(settings, model)
        services.scheduler.start()
        services.vad.start()
        app.state.services = services
        try:
            yield
        finally:
            await services.scheduler.close()
            services.vad.close()

    async def health(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        body = services.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    def ws_route(route: Route) -> Any:
        async def endpoint(ws: WebSocket) -> None:
            await serve_websocket(ws, route, ws.app.state.services)

        return endpoint

    return Starlette(
        routes=[
            HttpRoute("/api/v1/health", health, methods=["GET"]),
            WebSocketRoute("/api/v1/simple", ws_route(Route.SIMPLE)),
            WebSocketRoute("/api/v1/segmented", ws_route(Route.SEGMENTED)),
        ],
        lifespan=lifespan,
    )
