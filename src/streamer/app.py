"""The composition root: builds every part from settings and wires the routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from streamer.auth import policy_from_settings
from streamer.config import Settings
from streamer.fleet import FleetSlot
from streamer.inference.model import Model, TestModel, UnsupportedModel
from streamer.inference.pool import ThreadPool, WorkerPool
from streamer.inference.process_pool import ModelFactory, ProcessPool
from streamer.inference.scheduler import BatchStats, Scheduler
from streamer.inference.whisper import WhisperRecognizer, model_directory
from streamer.observability.loop import LoopMonitor
from streamer.observability.metrics import Metrics, collect_all, multiprocess_dir, new_registry
from streamer.observability.pressure import Ceilings, Pressure
from streamer.observability.tracing import Tracing
from streamer.pipeline import Route
from streamer.policy import ConnectionPolicy, allow_all
from streamer.segmentation.vad import VadEngine
from streamer.services import Services
from streamer.transport.grpc import GrpcServer, start_grpc_server
from streamer.transport.websocket import serve_websocket

log = logging.getLogger(__name__)


def model_factory(settings: Settings) -> ModelFactory:
    """A picklable recipe for the model the settings name, so that each worker process can
    build its own."""
    inference = settings.inference
    if inference.model == "whisper":
        # Threads share one model with a replica per worker; a process has one worker.
        workers = inference.workers if inference.pool == "thread" else 1
        model_directory(settings.whisper)  # fails here, clearly, without the extra
        return functools.partial(WhisperRecognizer, settings.whisper, workers=workers)
    if inference.model == "test":
        return functools.partial(TestModel, settings.model)
    return import_factory(inference.model)


def import_factory(reference: str) -> ModelFactory:
    """``package.module:factory`` to the callable it names (by reference, so picklable)."""
    module_name, _, attribute = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UnsupportedModel(f"cannot load the model factory {reference}: {error}") from None
    if not callable(factory):
        raise UnsupportedModel(f"the model factory {reference} is not callable")
    return cast(ModelFactory, factory)


def build_model(settings: Settings) -> Model:
    """The model the settings name: the test model, Whisper (the whisper extra), or a
    factory of one's own."""
    model = model_factory(settings)()
    if not isinstance(model, Model):
        raise UnsupportedModel(
            f"{settings.inference.model} made a {type(model).__name__}, which is not a model: "
            "it needs name, sample_rate, max_batch_size, infer and infer_batch"
        )
    return model


def build_services(
    settings: Settings,
    model: Model | None = None,
    *,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    policy: ConnectionPolicy = allow_all,
    fleet: FleetSlot | None = None,
) -> Services:
    """Create the shared parts; call inside a running event loop.

    ``metrics`` defaults to a fresh registry of its own; ``tracing`` to none at all;
    ``policy`` (who may connect) lets everyone in.
    """
    metrics = metrics or Metrics(CollectorRegistry())
    inference = settings.inference
    if inference.pool == "process" and model is not None:
        raise ValueError("a process pool builds its model from the settings; pass none")
    handle: Any = None
    if inference.backend == "ray":
        from streamer.inference.ray_backend import deploy, remote_model

        handle = deploy(settings)  # the model runs on Ray Serve; only its metadata here
        model = model or remote_model(handle)
    model = model or build_model(settings)
    server = settings.server
    pressure = Pressure(
        Ceilings(
            loop_lag=server.max_loop_lag_ms / 1000,
            vad_delay=server.max_vad_delay_ms / 1000,
            queue_wait=server.max_queue_wait_ms / 1000,
        )
    )

    def observe_batch(stats: BatchStats) -> None:
        metrics.observe_batch(stats)
        pressure.observe_batch(stats)

    pool: WorkerPool
    if handle is not None:
        from streamer.inference.ray_backend import RayPool

        pool = RayPool(handle, inference.workers)
    elif inference.pool == "process":
        pool = ProcessPool(model_factory(settings), inference.workers)
    else:
        pool = ThreadPool(
            model, inference.workers, max_replacements=inference.max_replacement_threads
        )
    scheduler = Scheduler(
        pool,
        sample_rate=model.sample_rate,
        max_batch=min(inference.max_batch, model.max_batch_size),
        max_wait=inference.max_wait_ms / 1000,
        deadline=inference.deadline_seconds,
        max_queued=inference.max_queued,
        observer=observe_batch,
        on_expired=metrics.inference_timeouts.inc,
    )
    vad = VadEngine(
        on_batch=metrics.observe_vad_batch, min_interval=settings.stream.vad_step_ms / 1000
    )
    vad.on_delay = pressure.observe_vad_delay
    return Services(
        settings=settings,
        model=model,
        scheduler=scheduler,
        vad=vad,
        metrics=metrics,
        tracing=tracing or Tracing(),
        policy=policy,
        pressure=pressure,
        fleet=fleet,
    )


async def drain(services: Services) -> None:
    """Refuse new streams, give open ones ``drain_seconds`` to end, then end them (1001).

    Ending them (their finals, ``done``) may take up to a quarter of
    ``server.shutdown_timeout_seconds``; the rest is for stopping the server.
    """
    services.draining.set()
    server = services.settings.server
    loop = asyncio.get_running_loop()
    until = loop.time() + server.drain_seconds
    while services.live_streams and loop.time() < until:  # noqa: ASYNC110 (counts, not events)
        await asyncio.sleep(0.05)
    services.drain_expired.set()
    until = loop.time() + server.shutdown_timeout_seconds / 4
    while services.connections and loop.time() < until:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


PUBLISH_SECONDS = 1.0
"""How often each front-end process copies its live gauges into the shared metrics."""


async def _sample(services: Services, shared: bool) -> None:
    """Every second: the CPU cost per stream, and (``shared``) the published gauges."""
    while True:
        if shared:
            services.metrics.publish()
        await asyncio.sleep(PUBLISH_SECONDS)
        if services.pressure is not None:
            services.pressure.sample_cpu(services.live_streams)


def create_app(
    settings: Settings | None = None,
    model: Model | None = None,
    *,
    registry: CollectorRegistry | None = None,
    tracing: Tracing | None = None,
    policy: ConnectionPolicy | None = None,
    fleet: FleetSlot | None = None,
) -> Starlette:
    """The ASGI application; ``app.state.services`` exists while the lifespan runs.

    The lifespan also serves gRPC over the same services (``app.state.grpc_port``), unless
    ``server.grpc_enabled`` is off. Metrics go to ``registry`` (by default a new one with
    the process collectors), served at ``/metrics``; spans to ``tracing`` (by default as
    the ``OTEL_*`` variables say, flushed when the lifespan ends). ``policy`` is asked
    once per connection, on every route and transport, before any stream opens; by
    default it is the API-key policy of ``[auth]`` (everyone, when no keys are set).
    ``fleet``: this process's row when it is one of several front-end processes
    (``streamer serve --workers``); admission and health then count the whole server, and
    with prometheus-client's multiprocess mode on, ``/metrics`` serves every process's.
    """
    settings = settings or Settings()
    if policy is None:
        policy = policy_from_settings(settings.auth)
        if policy is allow_all:
            log.warning("no API keys are configured ([auth] api_keys): every client may connect")
    shared = fleet is not None and multiprocess_dir() is not None
    if shared:
        registry = CollectorRegistry()  # names only: the values live in the shared files
    registry = registry if registry is not None else new_registry()
    metrics = Metrics(registry, shared=shared)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_tracing = tracing or Tracing.from_env()
        services = build_services(
            settings, model, metrics=metrics, tracing=own_tracing, policy=policy, fleet=fleet
        )
        services.scheduler.start()
        services.vad.start()
        app.state.services = services
        pressure = services.pressure

        def observe_lag(seconds: float, slow: bool) -> None:
            metrics.observe_loop_lag(seconds, slow)
            if pressure is not None:
                pressure.observe_loop_lag(seconds)

        monitor = LoopMonitor(observe_lag)
        monitor.start()
        metrics.sources.tasks = monitor.task_counts
        grpc_server: GrpcServer | None = None
        publisher = asyncio.create_task(_sample(services, shared), name="pressure-sampler")
        try:
            if settings.server.grpc_enabled:
                server = settings.server
                grpc_server = await start_grpc_server(services, server.host, server.grpc_port)
                app.state.grpc_port = grpc_server.port
            yield
        finally:
            # After the drain, each step of stopping gets a share of the shutdown bound;
            # a model thread that hangs is not waited for.
            share = settings.server.shutdown_timeout_seconds / 8
            publisher.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=share)
            await services.scheduler.close(grace=share)
            services.vad.close()
            await monitor.close()
            if tracing is None:
                own_tracing.shutdown()  # exports what is still buffered

    async def health(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        body = services.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def metrics_endpoint(request: Request) -> Response:
        # On the loop's thread: the task counts read asyncio's task set.
        if shared:
            metrics.publish()
            return Response(collect_all(), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def ws_route(route: Route) -> Any:
        async def endpoint(ws: WebSocket) -> None:
            await serve_websocket(ws, route, ws.app.state.services)

        return endpoint

    return Starlette(
        routes=[
            HttpRoute("/api/v1/health", health, methods=["GET"]),
            HttpRoute("/metrics", metrics_endpoint, methods=["GET"]),
            WebSocketRoute("/api/v1/simple", ws_route(Route.SIMPLE)),
            WebSocketRoute("/api/v1/segmented", ws_route(Route.SEGMENTED)),
        ],
        lifespan=lifespan,
    )
