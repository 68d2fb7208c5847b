"""``streamer serve``: run the server until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from streamer.app import create_app, device_placement, drain, model_factory
from streamer.config import Settings, SettingsError, load_settings
from streamer.inference.model import UnsupportedModel
from streamer.observability.logging import configure_logging
from streamer.transport.limits import uvicorn_protocols, uvicorn_ws_max_size

log = logging.getLogger(__name__)


SECOND_SIGNAL_SECONDS = 2.0
"""After a second exit signal, the most stopping may take before the process exits anyway."""
GC_YOUNG_OBJECTS = 20_000
"""The collector's first threshold in a serving process (Python's default is 700)."""


def _exit_by(seconds: float, why: str) -> None:
    """Make sure the process is gone ``seconds`` from now, whatever its threads are doing
    (a model call that never returns, say)."""

    def force() -> None:
        log.error("%s: still running after %.1f s; exiting now", why, seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


class _DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains open streams before stopping.

    The process ends within ``drain_seconds + shutdown_timeout_seconds`` of the first
    signal, and within a couple of seconds of a second one, even if model threads hang.
    """

    def __init__(self, config: uvicorn.Config, app: Any, settings: Settings) -> None:
        super().__init__(config)
        self._app = app
        self._settings = settings
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        # What start-up made (modules, the models, settings) lives as long as the process:
        # out of the collector's reach, a full collection scans only what streams make.
        # Measured at 300 streams: the longest collection 44-56 ms instead of 88-107 ms,
        # and a quarter less of the CPU spent collecting.
        gc.collect()
        gc.freeze()
        # A young collection every GC_YOUNG_OBJECTS net allocations instead of every 700:
        # streams allocate fast and almost nothing they make is cyclic garbage.
        gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        server = self._settings.server
        if self._signals == 1:
            _exit_by(server.drain_seconds + server.shutdown_timeout_seconds, "shutdown")
        elif self._signals == 2:
            _exit_by(SECOND_SIGNAL_SECONDS, "a second exit signal")
        services = getattr(self._app.state, "services", None)
        if self._draining is not None or services is None or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        log.info("received %s: draining open streams", signal.Signals(sig).name)

        def begin() -> None:
            self._draining = asyncio.ensure_future(drain(services))
            self._draining.add_done_callback(lambda _: setattr(self, "should_exit", True))

        self._loop.call_soon_threadsafe(begin)


def run_server(
    settings: Settings, *, app: Any = None, sockets: list[socket.socket] | None = None
) -> None:
    """Serve HTTP and WebSocket on the configured address (or on ``sockets``, already
    bound) until told to stop."""
    # The event loop and the VAD engine's thread share the GIL; at Python's default 5 ms
    # a thread that wants it back waits that long, which under load slows every stream.
    sys.setswitchinterval(settings.server.gil_switch_interval_ms / 1000)
    app = app if app is not None else create_app(settings)
    server = settings.server
    http, ws = uvicorn_protocols(server)
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        loop="uvloop",
        http=http,  # httptools, with the connection cap and the request-head deadline
        ws=ws,  # websockets sans-I/O, with bounded message assembly and per-type caps
        ws_max_size=uvicorn_ws_max_size(server),
        ws_ping_interval=server.ws_ping_interval_seconds or None,
        ws_ping_timeout=server.ws_ping_timeout_seconds or None,
        ws_per_message_deflate=False,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through the handler configure_logging set
        lifespan="on",
        # Connections still open after the drain get a moment to close, not more.
        timeout_graceful_shutdown=max(1, int(server.shutdown_timeout_seconds / 4)),
    )
    _DrainingServer(config, app, settings).run(sockets=sockets)


def serve(
    host: str | None,
    port: int | None,
    config: Path | None,
    *,
    grpc_port: int | None = None,
    grpc: bool | None = None,
    model: str | None = None,
    workers: int | None = None,
) -> None:
    flags: dict[str, Any] = {}
    if workers is not None:
        flags["workers"] = workers
    if host is not None:
        flags["host"] = host
    if port is not None:
        flags["port"] = port
    if grpc_port is not None:
        flags["grpc_port"] = grpc_port
    if grpc is not None:
        flags["grpc_enabled"] = grpc
    layers: dict[str, Any] = {"server": flags} if flags else {}
    if model is not None:
        layers["inference"] = {"model": model}
    try:
        settings = load_settings(config, **layers)
    except SettingsError as error:
        # Logging is not set up yet (the settings say how): one line on stderr.
        print(f"streamer: cannot serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:
        model_factory(settings)  # the model can be found; it is built once serving starts
        placement = device_placement(settings)  # and its device can be used
    except UnsupportedModel as error:  # DeviceUnavailable too: one line, status 2
        log.error("cannot serve: %s", error)
        raise SystemExit(2) from None
    server = settings.server
    ports = [("HTTP", "server.port, --port", server.port)]
    if server.grpc_enabled:
        ports.append(("gRPC", "server.grpc_port, --grpc-port", server.grpc_port))
    for name, setting, number in ports:
        if (why := port_unavailable(server.host, number)) is not None:
            log.error(
                "cannot serve: the %s port %s:%d (%s) %s", name, server.host, number, setting, why
            )
            raise SystemExit(2)
    count = server.workers if server.workers is not None else usable_cores()
    if placement is not None:
        log.info("the whisper model runs on %s (%s)", placement.name, placement.reason)
        if placement.kind == "cuda" and count > 1 and settings.inference.pool != "shared":
            log.info(
                "each of the %d front-end processes loads its own copy of the model on %s; "
                "inference.pool = 'shared' has them share one",
                count,
                placement.name,
            )
    if count > 1:
        from streamer.cli.workers import run_fleet

        raise SystemExit(run_fleet(settings, count))
    run_server(settings)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def port_unavailable(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (in use, say), or None.

    Checked before serving, so that the usual mistake ends with one line and not a
    traceback from inside the server's start-up; port 0 (any free port) always works.
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"cannot be resolved: {error.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers bind: an address in TIME_WAIT is fine, one listened on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return (
                "is in use"
                if error.errno == errno.EADDRINUSE
                else f"cannot be bound: {error.strerror}"
            )
    return None
