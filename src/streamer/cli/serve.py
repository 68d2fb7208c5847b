"""``streamer serve``: run the server until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from streamer.app import create_app, drain, model_factory
from streamer.config import Settings, load_settings
from streamer.inference.model import UnsupportedModel
from streamer.observability.logging import configure_logging
from streamer.transport.limits import uvicorn_protocols, uvicorn_ws_max_size

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains open streams before stopping."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self._app.state, "services", None)
        if self._draining is not None or services is None or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        log.info("received %s: draining open streams", signal.Signals(sig).name)

        def begin() -> None:
            self._draining = asyncio.ensure_future(drain(services))
            self._draining.add_done_callback(lambda _: setattr(self, "should_exit", True))

        self._loop.call_soon_threadsafe(begin)


def run_server(settings: Settings) -> None:
    """Serve HTTP and WebSocket on the configured address until told to stop."""
    # The event loop and the VAD engine's thread share the GIL; at Python's default 5 ms
    # a thread that wants it back waits that long, which under load slows every stream.
    sys.setswitchinterval(settings.server.gil_switch_interval_ms / 1000)
    app = create_app(settings)
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
        timeout_graceful_shutdown=5,
    )
    _DrainingServer(config, app).run()


def serve(
    host: str | None,
    port: int | None,
    config: Path | None,
    *,
    grpc_port: int | None = None,
    grpc: bool | None = None,
    model: str | None = None,
) -> None:
    flags: dict[str, Any] = {}
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
    settings = load_settings(config, **layers)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:
        model_factory(settings)  # the model can be found; it is built once serving starts
    except UnsupportedModel as error:
        log.error("cannot serve: %s", error)
        raise SystemExit(2) from None
    run_server(settings)
