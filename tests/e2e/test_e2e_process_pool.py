"""The process pool end to end: a model that kills its worker process on one input fails
only that request (``worker_crashed``); the stream, the others and later streams go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

RATE = 16000


def write_noise(path: Path, samples: int) -> Path:
    noise = np.random.default_rng(samples).normal(0, 0.1, samples).astype(np.float32)
    sf.write(path, noise, RATE, subtype="PCM_16")
    return path


async def test_a_worker_crash_fails_only_its_request(
    launch: Callable[..., Any], tmp_path: Path
) -> None:
    srv = launch(
        env={
            "STREAMER_INFERENCE__POOL": "process",
            "STREAMER_INFERENCE__WORKERS": "2",
            # 1 s chunks on the simple route: only a 0.5 s tail has 8000 samples.
            "STREAMER_MODEL__PANIC_ON_SAMPLES": "8000",
            "STREAMER_MODEL__PANIC_KILLS_PROCESS": "true",
        }
    )
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
    # The pool replaced the worker: a later stream is served in full.
    later = await stream_file(srv.ws(), bystander)
    assert later.ok and len(later.segments) == 4
    assert "lost" in srv.output()  # the server logged the lost worker
