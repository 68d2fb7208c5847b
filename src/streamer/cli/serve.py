"""``streamer serve``: run the server until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from streamer.app import device_placement, model_factory
from streamer.config import SettingsError, load_settings
from streamer.inference.model import UnsupportedModel
from streamer.observability.logging import configure_logging
from streamer.runtime import run_server

log = logging.getLogger(__name__)


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
