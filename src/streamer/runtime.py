"""The server process: uvicorn on the composed application, with the connection limits'
protocols, a first exit signal that drains open streams, and a watchdog that makes sure the
process is gone in time whatever model threads do.

``streamer serve`` runs it in its own process, and each front-end process of
``streamer serve --workers N`` runs it on sockets the supervisor's ports share.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn

from streamer.app import create_app, drain
from streamer.config import Settings
from streamer.observability.memory import snapshots_from_env
from streamer.transport.limits import uvicorn_protocols, uvicorn_ws_max_size

__all__ = ["GC_YOUNG_OBJECTS", "SECOND_SIGNAL_SECONDS", "run_server"]

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
            self._draining = asyncio.ensure_future(drain(services, self._settings.server))
            self._draining.add_done_callback(lambda _: setattr(self, "should_exit", True))

        self._loop.call_soon_threadsafe(begin)


def run_server(
    settings: Settings, *, app: Any = None, sockets: list[socket.socket] | None = None
) -> None:
    """Serve HTTP and WebSocket on the configured address (or on ``sockets``, already
    bound) until told to stop."""
    snapshots_from_env()  # heap snapshots, when a leak hunt asks for them
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
