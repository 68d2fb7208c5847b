"""The composition root: builds every part from settings and wires the routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, WebSocketRoute
from starlette.routing import Route as HttpRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from streamer.admission import Admission
from streamer.auth import issuer_from_settings, policy_from_settings
from streamer.config import ServerSettings, Settings
from streamer.fleet import FleetSlot
from streamer.inference.device import Placement, check_compute_type, model_device, place
from streamer.inference.model import Model, TestModel, UnsupportedModel, make_model
from streamer.inference.model_server import ModelServer, SharedPool
from streamer.inference.pool import ThreadPool, WorkerPool
from streamer.inference.process_pool import ModelFactory, ProcessPool
from streamer.inference.scheduler import BatchStats, Scheduler
from streamer.inference.whisper import WhisperRecognizer, model_directory
from streamer.observability.gauges import collect_all, multiprocess_dir
from streamer.observability.loop import LoopMonitor
from streamer.observability.metrics import Metrics, new_registry
from streamer.observability.pressure import (
    CPU_BUDGET,
    PRIOR_VAD_MULTIPLE,
    THREAD_CLOCKS,
    Ceilings,
    Pressure,
    thread_cpu,
    usable_cpus,
)
from streamer.observability.tracing import Tracing
from streamer.origins import OriginPolicy
from streamer.pipeline import Route
from streamer.policy import ConnectionPolicy, allow_all
from streamer.protocol.connection import Limits
from streamer.segmentation.vad import FRAMES_PER_SECOND, VadEngine
from streamer.services import Connection, Services
from streamer.streams import StreamBounds, StreamFactory
from streamer.transport.assemblyai import ChunkBounds, serve_streaming, token_endpoint
from streamer.transport.deepgram import serve_listen
from streamer.transport.deepgram_flux import serve_flux
from streamer.transport.grant import grant_endpoint
from streamer.transport.grpc import GrpcServer, start_grpc_server
from streamer.transport.limits import grpc_server_options
from streamer.transport.realtime import serve_realtime
from streamer.transport.subscribe import serve_subscriber
from streamer.transport.twilio import serve_media_stream
from streamer.transport.websocket import serve_websocket
from streamer.turn.engine import TurnEngine
from streamer.turn.stage import TurnSettings
from streamer.twilio.bus import make_bus
from streamer.twilio.callbacks import CallbackPoster
from streamer.twilio.hub import CallHub, CallPublisher
from streamer.twilio.signature import SignaturePolicy, by_route

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
"""The demo page's static files (no build step)."""

PAGE_HEADERS = {
    # The page's URL may carry ?token=: no Referer with it to anything the page loads.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def model_factory(settings: Settings) -> ModelFactory:
    """A picklable recipe for the model the settings name, so that each worker process can
    build its own."""
    inference = settings.inference
    if inference.model == "whisper":
        # Threads (of this process, or of the shared model process) share one model with a
        # replica per worker; a worker process has one.
        workers = inference.workers if inference.pool != "process" else 1
        model_directory(settings.whisper)  # fails here, clearly, without the extra
        return functools.partial(WhisperRecognizer, settings.whisper, workers=workers)
    if inference.model == "test":
        return functools.partial(TestModel, settings.model)
    return import_factory(inference.model)


def device_placement(settings: Settings) -> Placement | None:
    """Where this machine would run the Whisper model the settings name (None for another
    model, or one on Ray, whose replicas choose on their own machines); raises
    ``DeviceUnavailable`` for a GPU that cannot be used, or a compute type the device
    does not run."""
    if settings.inference.model != "whisper" or settings.inference.backend != "local":
        return None
    placement = place(settings.whisper.device)
    check_compute_type(placement, settings.whisper.compute_type)
    return placement


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
    return make_model(model_factory(settings), settings.inference.model)


def deploy_on_ray(settings: Settings) -> Any:
    """Deploy the model the settings name on Ray Serve (the ``ray`` extra), or with
    ``ray.deploy`` off find the deployment already running; its handle. The replicas build
    the model from ``model_factory``'s picklable recipe."""
    from streamer.inference.ray_backend import deploy

    return deploy(
        settings.ray,
        functools.partial(model_factory, settings),
        settings.inference.model,
        panic_kills_process=settings.model.panic_kills_process,
    )


def build_services(
    settings: Settings,
    model: Model | None = None,
    *,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    policy: ConnectionPolicy = allow_all,
    fleet: FleetSlot | None = None,
    model_server: tuple[str, bytes] | None = None,
) -> Services:
    """Create the shared parts; call inside a running event loop.

    ``metrics`` defaults to a fresh registry of its own; ``tracing`` to none at all;
    ``policy`` (who may connect) lets everyone in. ``model_server``: the address and key
    of the model process that ``inference.pool = "shared"`` uses (the supervisor's); none:
    this process starts its own.
    """
    metrics = metrics or Metrics(CollectorRegistry())
    inference = settings.inference
    if inference.pool in ("process", "shared") and model is not None:
        raise ValueError(f"a {inference.pool} pool builds its model from the settings; pass none")
    handle: Any = None
    if inference.backend == "ray":
        from streamer.inference.ray_backend import remote_model

        handle = deploy_on_ray(settings)  # the model runs on Ray Serve; only its metadata here
        model = model or remote_model(handle)
    shared: SharedPool | None = None
    if inference.pool == "shared" and handle is None:
        owned: ModelServer | None = None
        if model_server is None:
            owned = ModelServer(model_factory(settings))
            owned.start()
            model_server = (owned.address, owned.authkey)
        shared, model = SharedPool.open(*model_server, inference.workers, server=owned)
    model = model or build_model(settings)
    metrics.model_info.labels(model.name, model_device(model)).set(1)
    server = settings.server
    turns = TurnEngine(
        threads=settings.turn.threads,
        max_batch=settings.turn.max_batch,
        max_wait=settings.turn.max_wait_ms / 1000,
        on_call=metrics.observe_turn_call,
    )  # its model is loaded by the first stream that detects turns
    vad = VadEngine(
        on_batch=metrics.observe_vad_batch, min_interval=settings.stream.vad_step_ms / 1000
    )
    loop_cpu = thread_cpu()  # built on the thread that runs the event loop

    def front_end_cpu() -> float:
        """The CPU of this process's front end: the event loop, the VAD engine and the
        turn engine (the turn engine's share is charged to the streams that use it)."""
        return loop_cpu() + vad.cpu_seconds + turns.cpu_seconds

    processes = fleet.fleet.workers if fleet is not None else 1
    pressure = Pressure(
        Ceilings(
            loop_lag=server.max_loop_lag_ms / 1000,
            vad_delay=server.max_vad_delay_ms / 1000,
            queue_wait=server.max_queue_wait_ms / 1000,
        ),
        cpu=front_end_cpu if THREAD_CLOCKS else None,  # else the whole process's
        turn_cpu=lambda: turns.cpu_seconds,
        budget=CPU_BUDGET * min(1.0, usable_cpus() / processes),
    )

    def observe_batch(stats: BatchStats) -> None:
        metrics.observe_batch(stats)
        pressure.observe_batch(stats)

    pool: WorkerPool
    if handle is not None:
        from streamer.inference.ray_backend import RayPool

        pool = RayPool(handle, inference.workers, batch_size=metrics.ray_batch_size.observe)
    elif shared is not None:
        pool = shared
    elif inference.pool == "process":
        pool = ProcessPool(model_factory(settings), inference.workers)
    else:
        pool = ThreadPool(
            model, inference.workers, max_replacements=inference.max_replacement_threads
        )
    if isinstance(pool, ThreadPool | ProcessPool):  # this process's own workers
        pressure.model_workers = pool.workers
    scheduler = Scheduler(
        pool,
        sample_rate=model.sample_rate,
        max_batch=min(inference.max_batch, model.max_batch_size),
        max_wait=inference.max_wait_ms / 1000,
        deadline=inference.deadline_seconds,
        max_queued=inference.max_queued,
        interim_max_wait=inference.interim_max_wait_ms / 1000 or None,
        interim_workers=inference.interim_workers or None,
        observer=observe_batch,
        on_expired=metrics.inference_timeouts.inc,
    )
    vad.on_delay = pressure.observe_vad_delay
    tracing = tracing or Tracing()
    draining = asyncio.Event()
    connections: set[Connection] = set()
    admission = Admission(
        max_streams=server.max_streams,
        max_backlog=server.max_backlog,
        scheduler=scheduler,
        metrics=metrics,
        draining=draining,
        connections=connections,
        pressure=pressure,
        fleet=fleet,
        within_estimate=server.admit_within_estimate,
        model_name=model.name,
        device=model_device(model),
    )
    stream = settings.stream
    streams = StreamFactory(
        admission=admission,
        model=model,
        scheduler=scheduler,
        vad=vad,
        bounds=StreamBounds(
            chunk_seconds=stream.chunk_seconds,
            max_in_flight=stream.max_in_flight,
            interim_interval=stream.interim_interval,
            min_interim_interval=stream.min_interim_interval,
            max_samples_per_second=stream.max_samples_per_second,
            max_lag_seconds=server.max_stream_lag_seconds,
            speculative_finals=stream.speculative_finals,
            speculative_pad_ms=stream.speculative_pad_ms,
        ),
        metrics=metrics,
        tracing=tracing,
        turns=turns,
        turn_defaults=TurnSettings(
            min_pause_ms=settings.turn.min_pause_ms,
            rescore_ms=settings.turn.rescore_ms or None,
            update_ms=settings.turn.update_ms,
        ),
    )
    written_off = (lambda: pool.written_off) if isinstance(pool, ThreadPool) else (lambda: 0)
    sources = metrics.sources
    sources.connections = lambda: Counter(c.route.value for c in connections)
    sources.streams = lambda: {route.value: n for route, n in admission.streams.items()}
    sources.queue_depth = lambda: scheduler.queued
    sources.busy_workers = lambda: scheduler.busy
    sources.workers = lambda: pool.workers
    sources.workers_available = lambda: pool.available_workers
    sources.workers_stuck = lambda: pool.stuck_workers
    sources.workers_written_off = written_off
    sources.interims_dropped = lambda: scheduler.interims_dropped
    sources.interims_skipped = lambda: scheduler.interims_skipped
    sources.capacity = admission.capacity
    sources.turn_capacity = functools.partial(admission.capacity, turns=True)
    sources.turn_cpu_seconds = lambda: turns.cpu_seconds
    sources.vad_cpu_seconds = lambda: vad.cpu_seconds
    # The loop's thread is the process's main one: its CPU since now, not the start-up's.
    serving_since = loop_cpu()
    sources.loop_cpu_seconds = (
        (lambda: loop_cpu() - serving_since) if THREAD_CLOCKS else lambda: 0.0  # not the process
    )
    return Services(
        admission=admission,
        streams=streams,
        metrics=metrics,
        tracing=tracing,
        policy=policy,
        limits=limits_of(settings),
        max_pending_events=server.max_pending_events,
        close_grace_seconds=server.close_grace_seconds,
        connections=connections,
        draining=draining,
    )


def limits_of(settings: Settings) -> Limits:
    """The connection limits the settings ask for."""
    return Limits(
        idle_seconds=settings.stream.idle_seconds,
        max_audio_seconds=settings.stream.max_audio_seconds,
        max_wall_seconds=settings.stream.max_wall_seconds,
        max_messages_per_second=settings.server.max_messages_per_second,
    )


async def drain(services: Services, server: ServerSettings) -> None:
    """Refuse new streams, give open ones ``drain_seconds`` to end, then end them (1001).

    Ending them (their finals, ``done``) may take up to a quarter of
    ``server.shutdown_timeout_seconds``; the rest is for stopping the server.
    """
    services.draining.set()
    loop = asyncio.get_running_loop()
    until = loop.time() + server.drain_seconds
    while services.admission.live_streams and loop.time() < until:  # noqa: ASYNC110 (counts, not events)
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
        services.admission.sample_cpu()


def create_app(
    settings: Settings | None = None,
    model: Model | None = None,
    *,
    registry: CollectorRegistry | None = None,
    tracing: Tracing | None = None,
    policy: ConnectionPolicy | None = None,
    fleet: FleetSlot | None = None,
    model_server: tuple[str, bytes] | None = None,
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
    ``model_server``: the model process of ``inference.pool = "shared"`` (the supervisor
    passes its own; by default this process starts one).
    """
    settings = settings or Settings()
    tokens = issuer_from_settings(settings.auth)
    if policy is None:
        policy = policy_from_settings(settings.auth, tokens)
        if policy is allow_all:
            log.warning("no API keys are configured ([auth] api_keys): every client may connect")
    # One policy for every transport and route: the origin check, then keys and tokens.
    server_settings = settings.server
    policy = OriginPolicy(
        policy,
        server_settings.allowed_origins,
        allow_missing=server_settings.allow_missing_origin,
    )
    twilio_settings = settings.twilio
    if twilio_settings.auth_token is not None:
        # Twilio cannot send an API key: on its route, its signature is the credential.
        signed = SignaturePolicy(
            twilio_settings.auth_token.get_secret_value(), twilio_settings.public_url
        )
        policy = by_route({"twilio": signed}, policy)
    shared = fleet is not None and multiprocess_dir() is not None
    if shared:
        registry = CollectorRegistry()  # names only: the values live in the shared files
    registry = registry if registry is not None else new_registry()
    metrics = Metrics(registry, shared=shared)
    hub = CallHub(
        replay=twilio_settings.replay_finals,
        retain=twilio_settings.retain_calls,
        max_calls=twilio_settings.max_calls,
        queue=settings.server.max_pending_events,
    )
    bus = make_bus(
        settings.bus,
        hub,
        fleet.fleet.bus if fleet is not None else None,
        on_state=metrics.bus_state,
    )
    callbacks: list[CallbackPoster] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_tracing = tracing or Tracing.from_env()
        services = build_services(
            settings,
            model,
            metrics=metrics,
            tracing=own_tracing,
            policy=policy,
            fleet=fleet,
            model_server=model_server,
        )
        services.streams.scheduler.start()
        services.streams.vad.start()
        await bus.start()
        app.state.services = services
        pressure = services.admission.pressure
        if pressure is not None:  # what a stream costs before one is measured
            per_frame = await asyncio.to_thread(services.streams.vad.cost_per_frame)
            pressure.prior_cost = PRIOR_VAD_MULTIPLE * per_frame * FRAMES_PER_SECOND

        def observe_lag(seconds: float, slow: bool) -> None:
            metrics.observe_loop_lag(seconds, slow)
            if pressure is not None:
                pressure.observe_loop_lag(seconds)

        monitor = LoopMonitor(observe_lag)
        monitor.start()
        if pressure is not None:
            pressure.watch_loop(monitor.overdue)
        if twilio_settings.callback_hosts:
            poster = CallbackPoster(
                twilio_settings.callback_hosts,
                timeout=twilio_settings.callback_timeout_seconds,
                queue=twilio_settings.callback_queue,
                on_outcome=lambda outcome: metrics.twilio_callbacks.labels(outcome).inc(),
            )
            poster.start()
            callbacks.append(poster)
        metrics.sources.tasks = monitor.task_counts
        grpc_server: GrpcServer | None = None
        publisher = asyncio.create_task(_sample(services, shared), name="pressure-sampler")
        try:
            if settings.server.grpc_enabled:
                server = settings.server
                options = [
                    ("grpc.max_receive_message_length", server.max_message_bytes),
                    # A port in use is an error at start, not a port shared with another
                    # process; only the front-end processes of one server share it.
                    ("grpc.so_reuseport", 1 if fleet is not None else 0),
                    *grpc_server_options(server),
                ]
                grpc_server = await start_grpc_server(
                    services, server.host, server.grpc_port, options
                )
                app.state.grpc_port = grpc_server.port
            yield
        finally:
            # After the drain, each step of stopping gets a share of the shutdown bound;
            # a model thread that hangs is not waited for.
            share = settings.server.shutdown_timeout_seconds / 8
            publisher.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=share)
            for poster in callbacks:
                await poster.close(grace=share)
            callbacks.clear()
            await services.streams.scheduler.close(grace=share)
            await bus.close()
            services.streams.vad.close()
            if services.streams.turns is not None:
                services.streams.turns.close(timeout=share)
            await monitor.close()
            if tracing is None:
                own_tracing.shutdown()  # exports what is still buffered

    async def health(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        body = {**services.admission.health(), "bus": bus.status()}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def metrics_endpoint(request: Request) -> Response:
        # On the loop's thread: the task counts read asyncio's task set.
        if shared:
            metrics.publish()
            return Response(collect_all(), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return FileResponse(WEB / "index.html", headers=PAGE_HEADERS)

    def ws_route(route: Route) -> Any:
        async def endpoint(ws: WebSocket) -> None:
            await serve_websocket(ws, route, ws.app.state.services)

        return endpoint

    async def realtime(ws: WebSocket) -> None:
        # An append past the limit is an error event; a text frame past max_text_bytes
        # is the transport's 1009.
        max_append = settings.server.max_text_bytes // 2
        await serve_realtime(ws, ws.app.state.services, max_append_bytes=max_append)

    async def listen(ws: WebSocket) -> None:
        await serve_listen(ws, ws.app.state.services)

    assemblyai_bounds = ChunkBounds(
        settings.assemblyai.min_chunk_ms,
        settings.assemblyai.max_chunk_ms,
        max_session_seconds=settings.stream.max_wall_seconds,
    )

    async def assemblyai_streaming(ws: WebSocket) -> None:
        await serve_streaming(ws, ws.app.state.services, assemblyai_bounds)

    async def flux(ws: WebSocket) -> None:
        await serve_flux(ws, ws.app.state.services)

    def call_sink() -> CallPublisher:
        poster = callbacks[0] if callbacks else None
        return CallPublisher(
            bus,
            allowed=poster.allowed if poster else lambda url: False,
            post=poster.post if poster else None,
            on_callback=lambda outcome: metrics.twilio_callbacks.labels(outcome).inc(),
        )

    async def twilio(ws: WebSocket) -> None:
        await serve_media_stream(
            ws,
            ws.app.state.services,
            call_sink(),
            on_rejected=lambda reason: metrics.twilio_rejected.labels(reason).inc(),
            max_skew_seconds=twilio_settings.max_skew_seconds,
        )

    async def call_events(ws: WebSocket) -> None:
        key = f"call:{ws.path_params['sid']}"
        await serve_subscriber(ws, ws.app.state.services, bus, key, name="twilio_events")

    async def stream_events(ws: WebSocket) -> None:
        key = f"stream:{ws.path_params['sid']}"
        await serve_subscriber(ws, ws.app.state.services, bus, key, name="twilio_events")

    return Starlette(
        routes=[
            HttpRoute("/api/v1/health", health, methods=["GET"]),
            HttpRoute("/metrics", metrics_endpoint, methods=["GET"]),
            # Tokens name the stream routes they may open (their audience).
            HttpRoute(
                "/api/v1/auth/grant",
                grant_endpoint(tokens, [route.value for route in Route]),
                methods=["POST"],
            ),
            WebSocketRoute("/api/v1/simple", ws_route(Route.SIMPLE)),
            WebSocketRoute("/api/v1/segmented", ws_route(Route.SEGMENTED)),
            WebSocketRoute("/v1/realtime", realtime),
            HttpRoute("/", page, methods=["GET"]),
            Mount("/demo", StaticFiles(directory=WEB), name="demo"),
            # Deepgram's live API, so that its clients need only a base URL.
            WebSocketRoute("/v1/listen", listen),
            # AssemblyAI's Universal-Streaming v3 and its temporary tokens, likewise.
            WebSocketRoute("/v3/ws", assemblyai_streaming),
            HttpRoute("/v3/token", token_endpoint(tokens), methods=["GET"]),
            WebSocketRoute("/v2/listen", flux),
            WebSocketRoute("/v1/twilio", twilio),
            WebSocketRoute("/v1/twilio/calls/{sid}/events", call_events),
            WebSocketRoute("/v1/twilio/streams/{sid}/events", stream_events),
        ],
        lifespan=lifespan,
    )
