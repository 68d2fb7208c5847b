"""``pip install .`` into a fresh virtual environment is enough to serve.

The package is built and installed as a user would (no editable install, no extra wheels
by hand, nothing from this checkout on the path), then ``streamer serve`` from that
environment answers its health check and segments real speech with the bundled Silero VAD.
Slow (it installs every dependency, from pip's cache when it has them), so one test does it all.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import HOST, free_port

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
INSTALL_TIMEOUT = 110


def copy_sources(target: Path) -> Path:
    """What ``pip install .`` reads, without build leftovers of this checkout."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(
        ROOT / "src",
        target / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    return target


def install(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh venv with ``pip install .``: its bin directory, and the environment to run it."""
    source = copy_sources(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("STREAMER_")}
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Nothing but the package's own requirements: no silero-vad, torch or matplotlib.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, streamer;"
            "print(streamer.__file__);"
            "print([m for m in ('silero_vad', 'torch', 'matplotlib') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    where, extra = probe.stdout.splitlines()
    assert where.startswith(str(venv)), where
    assert extra == "[]", extra
    return venv / "bin", env


def serve(
    tmp_path: Path, bin_dir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """``streamer serve`` of that venv, once its health check answers 200 ``ok``."""
    config = tmp_path / "streamer.toml"
    config.write_text('log_level = "warning"\n[server]\ndrain_seconds = 1\n')
    port = free_port()
    command = [str(bin_dir / "streamer"), "serve", "--host", HOST, "--port", str(port)]
    command += ["--grpc-port", "0", "--config", str(config)]
    with (tmp_path / "server.log").open("wb") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            health = httpx.get(f"http://{HOST}:{port}/api/v1/health", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        assert health.status_code == 200 and health.json()["status"] == "ok"
        return server, port
    server.kill()
    pytest.fail("the installed server did not answer:\n" + (tmp_path / "server.log").read_text())


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(30)


@pytest.mark.timeout(240)
async def test_pip_install_alone_serves_segmented_speech(tmp_path: Path) -> None:
    bin_dir, env = await asyncio.to_thread(install, tmp_path)
    server, port = await asyncio.to_thread(serve, tmp_path, bin_dir, env)
    try:
        url = f"ws://{HOST}:{port}/api/v1/segmented"
        result = await stream_file(url, load_audio(AUDIO / "jfk.wav"))
        assert result.ok, result.events
        assert [e["type"] for e in result.events].count("active") >= 1
        assert len(result.segments) >= 1 and all(s["count"] > 0 for s in result.segments)
    finally:
        await asyncio.to_thread(stop, server)
    assert "Traceback" not in (tmp_path / "server.log").read_text()
