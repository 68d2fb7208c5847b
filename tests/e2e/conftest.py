"""Real servers on real sockets: each fixture runs ``streamer serve`` as a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One running server; its output goes to ``log``."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    drain_seconds: float
    grpc_port: int = 0
    """The gRPC port, when the server was started with one (``start_server(grpc=True)``)."""

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}"

    def ws(self, route: str = "simple") -> str:
        return f"ws://{HOST}:{self.port}/api/v1/{route}"

    def grpc(self, route: str = "simple") -> str:
        """The client library's URL of a gRPC route."""
        assert self.grpc_port, "this server serves no gRPC: start it with grpc=True"
        return f"grpc://{HOST}:{self.grpc_port}/{route}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def fds(self) -> int:
        """File descriptors the server holds open now."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        """The server's resident memory now, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def gauge(self, name: str) -> float:
        """The sum of a metric's samples (all labels) on ``/metrics`` now."""
        text = httpx.get(f"{self.http}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )

    def stop(self) -> int:
        """SIGTERM, then wait; a server that does not stop is killed and reported."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"the server did not stop on SIGTERM:\n{self.output()[-3000:]}")
        return self.process.returncode


def _config(drain_seconds: float) -> str:
    return (
        'log_level = "warning"\n'
        "[server]\n"
        f"drain_seconds = {drain_seconds}\n"
        # The test machine is shared and busy: a late timer there is not an overload.
        "max_loop_lag_ms = 1000\n"
        "[inference]\n"
        "workers = 2\n"
    )


def start_server(
    directory: Path,
    *,
    drain_seconds: float = 1.0,
    env: dict[str, str] | None = None,
    grpc: bool = False,
    workers: int = 1,
) -> ServerProcess:
    """Start a server with the speedy test model and wait until its health check answers;
    with ``grpc``, it serves gRPC on a free port too; ``workers`` front-end processes
    (one unless asked, whatever the machine's cores)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "streamer.toml"
    config.write_text(_config(drain_seconds))
    log = directory / "server.log"
    port = free_port()
    grpc_port = free_port() if grpc else 0
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    child_env.update(env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer.cli.main",
                "serve",
                "--host",
                HOST,
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--config",
                str(config),
                "--workers",
                str(workers),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
    server = ServerProcess(process, port, log, drain_seconds, grpc_port)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.http}/api/v1/health", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    pytest.fail(f"the server did not become healthy in {START_TIMEOUT} s:\n{server.output()}")


def server_fixture(name: str, env: dict[str, str], *, grpc: bool = False) -> Any:
    """A module's own server with ``env``, as a fixture: ``slow = server_fixture(...)``."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
        running = start_server(tmp_path_factory.mktemp(name), env=env, grpc=grpc)
        yield running
        running.stop()

    return fixture


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the speedy test model, shared by the whole session."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose model fails on every input."""
    running = start_server(
        tmp_path_factory.mktemp("failing"), env={"STREAMER_MODEL__FAILURE_RATE": "1.0"}
    )
    yield running
    running.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of one's own (to stop them, for instance); all are stopped afterwards."""
    started: list[ServerProcess] = []

    def _launch(
        *,
        drain_seconds: float = 1.0,
        env: dict[str, str] | None = None,
        grpc: bool = False,
        workers: int = 1,
    ) -> ServerProcess:
        directory = tmp_path / f"server{len(started)}"
        running = start_server(
            directory, drain_seconds=drain_seconds, env=env, grpc=grpc, workers=workers
        )
        started.append(running)
        return running

    yield _launch
    for running in started:
        running.stop()
