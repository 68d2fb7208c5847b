"""``streamer serve`` refuses settings it cannot use with one clear line and status 2.

Each case runs the real command as a child process: invalid TOML, an unknown section or
key, a wrong type, an out-of-range value, a missing file, a bad environment variable, and
ports already in use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOST, free_port

pytestmark = pytest.mark.e2e


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli.main", "serve", "--host", HOST, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The process ended with status 2 and said why in one line, without a traceback."""
    output = (proc.stderr + proc.stdout).strip()
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[server\nport = 1\n", ["is not valid TOML", "line 1"]),
        ("[server]\nport = \n", ["is not valid TOML", "line 2"]),
        ("[sever]\nport = 1\n", ["unknown section or key 'sever'", "server"]),
        ("[server]\nprot = 1\n", ["unknown key 'server.prot'", "port"]),
        (
            '[server]\nmax_streams = "many"\n',
            ["server.max_streams", "expected a valid integer", "'many'"],
        ),
        ("[server]\ndrain_seconds = -1\n", ["server.drain_seconds", "greater than or equal"]),
        ("[inference]\nworkers = 100000\n", ["inference.workers", "less than or equal to 256"]),
        ("[stream]\nmax_samples_per_second = nan\n", ["stream.max_samples_per_second"]),
        ('log_level = "loud"\n', ["log_level", "'info'", "'loud'"]),
        ("[model]\nhang_rate = 2\n", ["model.hang_rate", "less than or equal to 1"]),
    ],
)
def test_bad_settings_files_end_with_one_line(tmp_path: Path, toml: str, says: list[str]) -> None:
    path = tmp_path / "streamer.toml"
    path.write_text(toml)
    line = one_line(serve("--port", "0", "--config", str(path)))
    assert str(path) in line
    for part in says:
        assert part in line, line


def test_a_missing_settings_file_ends_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    line = one_line(serve("--port", "0", "--config", str(missing)))
    assert str(missing) in line and "does not exist" in line


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    line = one_line(serve("--port", "0", env={"STREAMER_SERVER__MAX_STREAMS": "many"}))
    assert "STREAMER_SERVER__MAX_STREAMS" in line and "server.max_streams" in line


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_a_port_in_use_ends_with_one_line(which: str) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_port()
        args = ["--grpc-port", str(port), "--port", str(other)]
        if which == "http":
            args = ["--grpc-port", str(other), "--port", str(port)]
        line = one_line(serve(*args))
    assert f"{HOST}:{port}" in line and "in use" in line
    assert ("gRPC" if which == "grpc" else "HTTP") in line
