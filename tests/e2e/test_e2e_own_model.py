"""A model of one's own, named in settings, served for real: ``--model package.module:factory``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOST, free_port, start_server

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parents[1]
AUDIO = TESTS / "fixtures" / "audio"


def _env(**more: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "STREAMER_INFERENCE__MODEL": "model_factories:loudness", **more}


@pytest.mark.parametrize("pool", ["thread", "process", "shared"])
async def test_the_server_runs_a_model_named_by_its_factory(tmp_path: Path, pool: str) -> None:
    server = start_server(tmp_path, env=_env(STREAMER_INFERENCE__POOL=pool))
    try:
        audio = load_audio(AUDIO / "jfk.wav")  # 16 kHz; the model takes 8 kHz
        result = await stream_file(server.ws("simple"), audio)
    finally:
        server.stop()
    assert result.ok, result.errors
    assert result.ready is not None
    assert (result.ready["model"], result.ready["model_sample_rate"]) == ("loudness", 8000)
    finals = result.segments
    assert [s["samples"] for s in finals] == [8000] * 11  # 11 s in 1 s chunks, at 8 kHz
    assert all(-40 < s["dbfs"] < 0 for s in finals)  # speech, neither silent nor clipped


def test_serve_refuses_to_start_with_a_factory_it_cannot_load() -> None:
    command = [sys.executable, "-m", "streamer.cli.main", "serve", "--host", HOST]
    command += ["--port", str(free_port()), "--no-grpc", "--model", "model_factories:nope"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 2
    assert "cannot load the model factory model_factories:nope" in done.stderr + done.stdout
