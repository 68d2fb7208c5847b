"""One model process for every front-end process (``inference.pool = "shared"``), end to
end with the test model: two front-end processes, one model process; a model that kills
its process on one input fails only that request (``worker_crashed``), the supervisor
starts the model process again, and later streams are served in full."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

RATE = 16000
SHARED = {
    "STREAMER_INFERENCE__POOL": "shared",
    # 1 s chunks on the simple route: only a 0.5 s tail has 8000 samples.
    "STREAMER_MODEL__PANIC_ON_SAMPLES": "8000",
    "STREAMER_MODEL__PANIC_KILLS_PROCESS": "true",
}


def write_noise(path: Path, samples: int) -> Path:
    noise = np.random.default_rng(samples).normal(0, 0.1, samples).astype(np.float32)
    sf.write(path, noise, RATE, subtype="PCM_16")
    return path


def health(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/api/v1/health", timeout=10).json())


async def test_front_ends_share_the_model_process_and_outlive_its_crash(
    launch: Callable[..., Any], tmp_path: Path
) -> None:
    srv = launch(env=SHARED, workers=2)
    body = health(srv.http)
    assert (body["model"], body["device"]) == ("test", "cpu")  # the model process's
    victim = load_audio(write_noise(tmp_path / "victim.wav", 2 * RATE + 8000))
    bystander = load_audio(write_noise(tmp_path / "bystander.wav", 4 * RATE))
    crashed, other = await asyncio.gather(
        stream_file(srv.ws(), victim, real_time=True),
        stream_file(srv.ws(), bystander, real_time=True),
    )
    assert [(s["start_time"], s["end_time"]) for s in crashed.segments] == [(0, 1), (1, 2)]
    [error] = crashed.errors
    assert error["code"] == "worker_crashed"
    assert (error["start_time"], error["end_time"]) == (2.0, 2.5)
    assert crashed.done is not None  # the stream itself went on to the end
    assert other.ok and [s["count"] for s in other.segments] == [RATE] * 4
    # The supervisor started the model process again; both front-ends reach it.
    results = await asyncio.gather(*(stream_file(srv.ws(), bystander) for _ in range(6)))
    assert all(r.ok and len(r.segments) == 4 for r in results), [r.errors for r in results]
    assert "the model process exited with -9; starting it again" in srv.output()
