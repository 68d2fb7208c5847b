"""The event loop's CPU per audio message on the segmented route, without a socket.

Runs ``--streams`` connections at once through the real connection machine, driver,
pipeline, VAD engine and scheduler (``streamer.testing``: no network, the test model),
each sending ``jfk.wav`` in 100 ms messages as fast as it is answered, and reports the
CPU time of the event loop's thread per message (``time.thread_time``): the part of a
stream's cost that the floor's ingest does not cover, and the one the route core changes.
The VAD engine's step interval is 0 here, so that how fast the loop answers does not
change how often the engine wakes (and with it the loop): a fair comparison between two
versions of the code, run one after the other on the same machine:

    PYTHONPATH=src python benchmarks/bench_loop_cpu.py
    PYTHONPATH=<a checkout of another commit>/src python benchmarks/bench_loop_cpu.py

The best of ``--rounds`` rounds is the figure; the VAD engine's own thread is not in it.
Where the code has the synchronous route core (``streamer.route``), its share is timed
too: ``SegmentedRoute.push`` and ``segment`` over the same messages, with speech
probabilities that open and close a segment every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import soundfile as sf

from streamer.config import Settings, StreamSettings
from streamer.inference.model import TestModel
from streamer.testing import run_connection, running_services

# Commits from before the route core kept ``Route`` in the pipeline module.
Route = (
    getattr(import_module("streamer.events"), "Route", None)
    or import_module("streamer.pipeline").Route
)

SPEECH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio" / "jfk.wav"
MESSAGE = 3200  # 100 ms of 16 kHz 16-bit mono


async def measure(streams: int, rounds: int) -> list[float]:
    samples, _ = sf.read(SPEECH, dtype="int16")
    audio = samples.tobytes()
    messages = [audio[i : i + MESSAGE] for i in range(0, len(audio), MESSAGE)]
    fmt = {"channels": 1, "sample_rate": 16000, "bit_depth": 16}
    start = json.dumps({"request": "start", "format": fmt})
    inbound = [start, *messages, '{"request": "stop"}']
    settings = Settings(stream=StreamSettings(vad_step_ms=0))
    figures = []
    async with running_services(settings, TestModel.speedy()) as services:
        for _ in range(rounds):
            began = time.thread_time()
            outcomes = await asyncio.gather(
                *(run_connection(services, Route.SEGMENTED, inbound) for _ in range(streams))
            )
            spent = time.thread_time() - began
            assert all(json.loads(o.sent[-1])["type"] == "done" for o in outcomes)
            figures.append(spent / (streams * len(messages)) * 1e6)
    return figures


def route_core(rounds: int) -> float | None:
    """Microseconds per message in the segmented route core alone (best of ``rounds``);
    None where the code has none."""
    try:
        from streamer.route.segmented import SegmentedRoute
        from streamer.segmentation.segmenter import VadParams
    except ImportError:
        return None
    samples, _ = sf.read(SPEECH, dtype="float32")
    step = MESSAGE // 2
    blocks = [samples[None, i : i + step] for i in range(0, len(samples) - step + 1, step)]
    best = float("inf")
    for _ in range(rounds):
        route = SegmentedRoute(1, 16000, 16000, VadParams())
        began, n = time.thread_time(), 0
        for _ in range(20):
            for block in blocks:
                [frames] = route.push(block)
                speech = 0.9 if (n // 20) % 3 else 0.05  # 2 s of speech, 1 s of silence
                route.segment(0, frames, np.full(len(frames), speech, np.float32))
                n += 1
        best = min(best, (time.thread_time() - began) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.streams, args.rounds))
    rounds = ", ".join(f"{f:.1f}" for f in figures)
    print(f"event loop: {min(figures):.1f} us of CPU per message (best of {rounds})")
    core = route_core(args.rounds)
    if core is not None:
        print(f"of which the route core: {core:.1f} us per message (push and segment)")


if __name__ == "__main__":
    main()
