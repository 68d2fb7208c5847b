"""A model that kills its process on one input, beside a stream it must not harm: the
scenario shared by the process pool's and the shared model process's tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from streamer.client import load_audio, stream_file
from streamer.client.audio import LoadedAudio

RATE = 16000
PANIC = {
    # 1 s chunks on the simple route: only a 0.5 s tail has 8000 samples.
    "STREAMER_MODEL__PANIC_ON_SAMPLES": "8000",
    "STREAMER_MODEL__PANIC_KILLS_PROCESS": "true",
}
"""The test model's settings that make the victim's last inference kill its process."""


def write_noise(path: Path, samples: int) -> Path:
    noise = np.random.default_rng(samples).normal(0, 0.1, samples).astype(np.float32)
    sf.write(path, noise, RATE, subtype="PCM_16")
    return path


async def crash_beside_a_bystander(srv: Any, tmp_path: Path) -> LoadedAudio:
    """Stream a victim (2.5 s: its 0.5 s tail kills the model's process) and a bystander
    (4 s) at once in real time; the crash fails only the victim's last inference, with
    ``worker_crashed``, and both streams go on to their end. Returns the bystander's
    audio, for the streams after the crash."""
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
    return bystander
