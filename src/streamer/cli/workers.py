"""``streamer serve --workers N``: N front-end processes on the same ports, supervised.

The supervisor (this process) serves nothing itself. It reserves the HTTP and gRPC ports,
starts N worker processes (``spawn``), each binding both ports with ``SO_REUSEPORT`` (the
kernel spreads new connections across them) and running the whole single-process server
(its own event loop, VAD engine and model pool), and it:

- shares a table in shared memory (``streamer.fleet``) through which admission holds
  ``server.max_streams`` for the whole server and health reports every process;
- turns on prometheus-client's multiprocess mode, so that ``/metrics`` on any process
  serves the sum of all; a process that exits is marked dead (its live gauges go, its
  counters stay);
- relays the Twilio call bus (``streamer.twilio.bus``): a call's events, from the process
  that streams it, to every other, so that its subscribers may connect to any;
- forwards SIGTERM and SIGINT to every process, each of which drains its own streams,
  and exits once all have;
- with the Ray Serve backend, deploys the model once (starting a local cluster when no
  ``ray.address`` is set), and its processes join that cluster and share the deployment;
- with ``inference.pool = "shared"``, starts the one model process its processes connect
  to (``streamer.inference.model_server``), and starts it again if it exits;
- restarts a process that exits while the server is not stopping. That process's
  connections close with it (the kernel resets them: clients see the connection end,
  WebSocket 1006, gRPC UNAVAILABLE), the other processes' streams go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import wait
from types import FrameType
from typing import Any, Final

from streamer.config import Settings
from streamer.fleet import Fleet
from streamer.inference.model_server import ModelServer
from streamer.twilio.bus import BusRelay

log = logging.getLogger(__name__)

RESTART_DELAY: Final = 0.5
"""Seconds before a process that exited is started again."""
MAX_RESTARTS: Final = 5
RESTART_WINDOW: Final = 30.0
"""A process that exits ``MAX_RESTARTS`` times within this many seconds stops the server
(it cannot start: a bad model, say)."""
PARENT_CHECK_SECONDS: Final = 1.0


def _bind(host: str, port: int, *, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
        sock.setblocking(False)
    return sock


class _WorkerFilter(logging.Filter):
    """Puts the process's index (``worker``) on every log record."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _exit_with_parent(parent: int) -> None:
    """Drain and stop (SIGTERM to this process) when the supervisor is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(
    settings: Settings,
    index: int,
    array: Any,
    parent: int,
    bus: str,
    model_server: tuple[str, bytes] | None = None,
) -> None:
    """One front-end process (the target of each spawned process)."""
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes
    # one signal on, rather than every process seeing two.
    os.setpgrp()
    _exit_with_parent(parent)
    from streamer.app import create_app
    from streamer.observability.logging import configure_logging
    from streamer.runtime import run_server

    handler = configure_logging(settings.log_level, json_lines=settings.log_json)
    handler.addFilter(_WorkerFilter(index))
    slot = Fleet(settings.server.workers or 1, array, bus=bus).slot(index)
    slot.started(os.getpid())
    server = settings.server
    sock = _bind(server.host, server.port, listen=True)
    log.info("front-end process %d (pid %d) serving", index, os.getpid())
    app = create_app(settings, fleet=slot, model_server=model_server)
    run_server(settings, app=app, sockets=[sock])


class _Supervisor:
    def __init__(
        self,
        settings: Settings,
        workers: int,
        metrics_dir: str,
        bus: str,
        model_server: ModelServer | None = None,
    ) -> None:
        self.settings = settings
        self.model_server = model_server
        self.model_exits: list[float] = []
        self.fleet = Fleet(workers, bus=bus)
        self.metrics_dir = metrics_dir
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = [None] * workers
        self.exits: list[list[float]] = [[] for _ in range(workers)]
        self.stopping = False
        self.signals = 0

    def start(self, index: int) -> None:
        process = self.context.Process(
            target=worker_main,
            args=(
                self.settings,
                index,
                self.fleet.array,
                os.getpid(),
                self.fleet.bus,
                self._model_address(),
            ),
            name=f"streamer-frontend-{index}",
        )
        process.start()
        self.processes[index] = process

    def _model_address(self) -> tuple[str, bytes] | None:
        server = self.model_server
        return None if server is None else (server.address, server.authkey)

    def _watch_model(self) -> bool:
        """Start the model process again if it exited; False once it keeps exiting."""
        server = self.model_server
        if server is None or not server.exited or self.stopping:
            return True
        now = time.monotonic()
        self.model_exits = [t for t in self.model_exits if now - t < RESTART_WINDOW] + [now]
        if len(self.model_exits) >= MAX_RESTARTS:
            log.error(
                "the model process exited %d times in %.0f s; stopping the server",
                MAX_RESTARTS,
                RESTART_WINDOW,
            )
            return False
        log.error("the model process exited with %s; starting it again", server.exitcode)
        server.start()
        return True

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping = True
        log.info(
            "received %s: draining %d front-end processes",
            signal.Signals(sig).name,
            len(self.processes),
        )
        for process in self.processes:
            if process is not None and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        from prometheus_client import multiprocess

        for index in range(len(self.processes)):
            self.start(index)
        server = self.settings.server
        gave_up = False
        while True:
            alive = [p for p in self.processes if p is not None and p.exitcode is None]
            if self.stopping and not alive:
                break
            wait([p.sentinel for p in alive], timeout=0.5)
            if not self._watch_model():
                gave_up = True
                self.on_signal(signal.SIGTERM, None)
            for index, process in enumerate(self.processes):
                if process is None or process.exitcode is None:
                    continue
                if self.stopping:
                    continue
                log.error(
                    "front-end process %d (pid %s) exited with %s; starting it again",
                    index,
                    process.pid,
                    process.exitcode,
                )
                multiprocess.mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                self.fleet.reset(index, restarted=True)
                now = time.monotonic()
                recent = [t for t in self.exits[index] if now - t < RESTART_WINDOW]
                self.exits[index] = [*recent, now]
                if len(self.exits[index]) >= MAX_RESTARTS:
                    log.error(
                        "front-end process %d exited %d times in %.0f s; stopping the server",
                        index,
                        MAX_RESTARTS,
                        RESTART_WINDOW,
                    )
                    gave_up = True
                    self.on_signal(signal.SIGTERM, None)
                    self.processes[index] = None
                    continue
                time.sleep(RESTART_DELAY)
                if not self.stopping:
                    self.start(index)
        bound = server.drain_seconds + server.shutdown_timeout_seconds
        codes = [p.exitcode for p in self.processes if p is not None]
        log.info("all front-end processes stopped (%s); bound was %.1f s", codes, bound)
        # A process told to stop while still starting ends by the signal itself (its
        # server had not yet taken over the signal): it had no streams, so that is clean.
        clean = (0, -signal.SIGTERM)
        return 1 if gave_up or any(code not in clean for code in codes) else 0


def run_fleet(settings: Settings, workers: int) -> int:
    """Serve with ``workers`` front-end processes until SIGTERM or SIGINT; the exit status."""
    server = settings.server
    # Hold the ports (bound, not listening: the kernel hands connections only to the
    # workers' listening sockets) so that port 0 names one port for every process and
    # nothing else takes them between restarts.
    held = [_bind(server.host, server.port, listen=False)]
    resolved: dict[str, Any] = {"port": held[0].getsockname()[1]}
    if server.grpc_enabled:
        held.append(_bind(server.host, server.grpc_port, listen=False))
        resolved["grpc_port"] = held[1].getsockname()[1]
    settings = settings.model_copy(
        update={"server": server.model_copy(update={**resolved, "workers": workers})}
    )
    if settings.inference.backend == "ray" and settings.ray.deploy:
        # One deployment (and without ray.address one local cluster), started here: every
        # front-end process sends its inputs to the same replicas, which batch across them.
        from streamer.app import deploy_on_ray
        from streamer.inference.model import UnsupportedModel

        try:
            from streamer.inference.ray_backend import cluster_address
        except UnsupportedModel as error:
            log.error("cannot serve: %s", error)
            return 2
        deploy_on_ray(settings)
        # The processes join that cluster and use that deployment.
        joined = {"address": cluster_address(settings.ray), "deploy": False}
        settings = settings.model_copy(update={"ray": settings.ray.model_copy(update=joined)})
    model_server: ModelServer | None = None
    if settings.inference.pool == "shared" and settings.inference.backend == "local":
        # One model process for every front-end process: the model is loaded once (on a
        # GPU, one copy and one CUDA context), and each front-end connects to it.
        from streamer.app import model_factory

        model_server = ModelServer(model_factory(settings))
        model_server.start()
    metrics_dir = tempfile.mkdtemp(prefix="streamer-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the workers inherit it
    relay = BusRelay(os.path.join(metrics_dir, "bus.sock"))
    relay.start()
    supervisor = _Supervisor(settings, workers, metrics_dir, relay.path, model_server)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    log.info(
        "serving on %s:%d (gRPC %s) with %d front-end processes",
        server.host,
        resolved["port"],
        resolved.get("grpc_port", "off"),
        workers,
    )
    try:
        return supervisor.run()
    finally:
        if model_server is not None:
            model_server.stop()
        relay.close()
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
