"""Real servers on real sockets: each fixture runs ``streamer serve`` as a child process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamer.spawn import HOST, ServerDidNotStart, SpawnedServer, free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


@dataclass
class ServerProcess(SpawnedServer):
    """One running server (``streamer.spawn``), with what the tests read of it."""

    drain_seconds: float = 1.0

    def fds(self) -> int:
        """File descriptors the server holds open now."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        """The server's resident memory now, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def gauge(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples on ``/metrics`` now: all of them, or those with
        the given label values."""
        text = httpx.get(f"{self.http}/metrics", timeout=5).text
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if (line.startswith(name + "{") or line.startswith(name + " "))
            and all(label in line.split("}", 1)[0] for label in wanted)
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; a server that does not stop is killed and reported."""
        code = super().stop(timeout)
        if self.killed:
            pytest.fail(f"the server did not stop on SIGTERM:\n{self.output()[-3000:]}")
        return code


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
    try:
        server = ServerProcess.start(
            config=config,
            env=env,
            host=HOST,
            grpc_port=free_port() if grpc else 0,
            workers=workers,
            log=directory / "server.log",
            inherit_settings=False,
            until_ok=True,
            start_timeout=START_TIMEOUT,
        )
    except ServerDidNotStart as error:
        pytest.fail(str(error))
    server.drain_seconds = drain_seconds
    return server


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
