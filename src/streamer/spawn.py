"""A ``streamer serve`` child process on free ports, for whatever needs a real server of its
own: ``streamer bench --spawn-server``, the benchmarks and the end-to-end tests.

The server is the installed command's (``python -m streamer.cli.main serve``), run as a
separate process, so what runs is what users run: its own event loop, its own sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
"""Seconds a server may take to answer its health check."""
STOP_TIMEOUT = 20.0
"""Seconds a server may take to stop on SIGTERM before it is killed."""

S = TypeVar("S", bound="SpawnedServer")


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer its health check in time; the message ends
    with its log."""


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SpawnedServer:
    """One running ``streamer serve``; its output goes to ``log``."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path
    grpc_port: int = 0
    """The gRPC port asked for (0: none, or one of the server's choosing)."""
    killed: bool = False
    """The server did not stop on SIGTERM within the stop's timeout and was killed."""

    @classmethod
    def start(
        cls: type[S],
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
        host: str = HOST,
        grpc_port: int | None = None,
        workers: int | None = None,
        log: Path | None = None,
        inherit_settings: bool = True,
        until_ok: bool = False,
        start_timeout: float = START_TIMEOUT,
    ) -> S:
        """Start a server on a free port and wait until its health check answers.

        ``config``: its settings file; ``env``: variables added to its environment (the
        caller's ``STREAMER_*`` variables are passed on too, with a ``warning`` log level
        by default, unless ``inherit_settings`` is off). ``grpc_port``: gRPC on that port
        (0: one the server picks); None: no gRPC.
        ``workers``: its front-end processes (None: as its settings say). ``log``: where
        its output goes (None: a temporary file). ``until_ok``: wait for the health check
        to say ``ok`` (200), not only to answer. Raises ``ServerDidNotStart``.
        """
        port = free_port(host)
        if log is None:
            log = Path(tempfile.mkstemp(prefix="streamer-server-", suffix=".log")[1])
        command = [sys.executable, "-m", "streamer.cli.main", "serve", "--host", host]
        command += ["--port", str(port)]
        command += ["--no-grpc"] if grpc_port is None else ["--grpc-port", str(grpc_port)]
        if config is not None:
            command += ["--config", str(config)]
        if workers is not None:
            command += ["--workers", str(workers)]
        child_env = {
            k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("STREAMER_")
        }
        if inherit_settings:
            child_env.setdefault("STREAMER_LOG_LEVEL", "warning")
        child_env.update(env or {})
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env)
        server = cls(process, host, port, log, grpc_port or 0)
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise ServerDidNotStart(
                    f"the server exited with {process.returncode} (log {log}):\n{server.output()}"
                )
            answer = server.health_status()
            if answer is not None and (not until_ok or answer[0] == 200):
                return server
            if time.monotonic() > deadline:
                server.stop()
                raise ServerDidNotStart(
                    f"the server did not become healthy in {start_timeout} s (log {log}):\n"
                    + server.output()
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, route: str) -> str:
        """A v1 WebSocket route's URL."""
        return f"ws://{self.host}:{self.port}/api/v1/{route}"

    def ws(self, route: str = "simple") -> str:
        return self.url(route)

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def grpc(self, route: str = "simple") -> str:
        """The client library's URL of a gRPC route."""
        assert self.grpc_port, "this server serves no gRPC on a known port"
        return f"grpc://{self.host}:{self.grpc_port}/{route}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health_status(self) -> tuple[int, dict[str, Any]] | None:
        """The health check's status and body, or None while nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.http}/api/v1/health", timeout=2.0) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except (OSError, ValueError):
            return None

    def health(self) -> dict[str, Any] | None:
        """The health check's body (also when it says the server is full or draining), or
        None while nothing answers."""
        answer = self.health_status()
        return None if answer is None else answer[1]

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; a server still running after ``timeout`` is killed
        (``killed``). Its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.killed = True
        return self.process.returncode


@contextlib.contextmanager
def spawn_server(
    config: Path | None = None,
    env: dict[str, str] | None = None,
    host: str = HOST,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[SpawnedServer]:
    """A server without gRPC, with ``config`` and extra ``STREAMER_*`` variables, until the
    block ends; its log (a temporary file) is kept only when something went wrong."""
    server = SpawnedServer.start(config=config, env=env, host=host, start_timeout=start_timeout)
    try:
        yield server
    finally:
        server.stop()
    server.log.unlink(missing_ok=True)
