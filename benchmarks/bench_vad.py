"""Silero VAD cost per stream-frame: batched across streams versus one stream per call.

Two tables, both in microseconds per 512-sample frame (32 ms of audio at 16 kHz), medians:

- model: ``SileroVad.run`` alone, ``B`` streams' frames in one call versus the same frames
  one call each;
- engine: ``N`` streams sending 3-frame chunks (about 100 ms) concurrently through
  ``VadEngine`` on an event loop: wall and process CPU time (loop and engine thread), and
  the rows its steps averaged.

    python benchmarks/bench_vad.py [--sizes 1 8 32 128 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from streamer.segmentation.vad import CONTEXT_SAMPLES, FRAME_SAMPLES, SileroVad, VadEngine

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "jfk.wav"  # 16 kHz already

Frames = NDArray[np.float32]


def speech_frames() -> Frames:
    audio, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 16000
    whole = len(audio) // FRAME_SAMPLES
    return np.asarray(audio[: whole * FRAME_SAMPLES], dtype=np.float32).reshape(
        whole, FRAME_SAMPLES
    )


def rows_at(frames: Frames, step: int, streams: int) -> Frames:
    """Frame ``step`` of each of ``streams`` streams, each starting elsewhere in the file."""
    index = (np.arange(streams) * 7 + step) % len(frames)
    return frames[index]


def model_batched(model: SileroVad, frames: Frames, streams: int, repeats: int) -> float:
    calls = max(4, 2048 // streams)
    state = np.zeros((2, streams, 128), dtype=np.float32)
    context = np.zeros((streams, CONTEXT_SAMPLES), dtype=np.float32)
    samples = []
    step = 0
    for _ in range(repeats + 1):  # the first round warms up
        began = time.perf_counter()
        for _ in range(calls):
            _, state, context = model.run(rows_at(frames, step, streams), state, context)
            step += 1
        samples.append((time.perf_counter() - began) / (calls * streams))
    return statistics.median(samples[1:]) * 1e6


def model_unbatched(model: SileroVad, frames: Frames, streams: int, repeats: int) -> float:
    calls = max(4, 2048 // streams)
    states = [np.zeros((2, 1, 128), dtype=np.float32) for _ in range(streams)]
    contexts = [np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32) for _ in range(streams)]
    samples = []
    step = 0
    for _ in range(repeats + 1):
        began = time.perf_counter()
        for _ in range(calls):
            rows = rows_at(frames, step, streams)
            for s in range(streams):
                _, states[s], contexts[s] = model.run(rows[s : s + 1], states[s], contexts[s])
            step += 1
        samples.append((time.perf_counter() - began) / (calls * streams))
    return statistics.median(samples[1:]) * 1e6


async def engine_round(engine: VadEngine, frames: Frames, streams: int, steps: int) -> None:
    async def one(offset: int) -> None:
        stream = engine.open_stream()
        for step in range(0, steps, 3):
            index = (np.arange(step, min(step + 3, steps)) + offset * 7) % len(frames)
            await engine.probabilities(stream, frames[index])

    await asyncio.gather(*(one(s) for s in range(streams)))


def engine_cost(frames: Frames, streams: int, repeats: int) -> tuple[float, float, float]:
    steps = max(24, 3072 // streams)
    walls, cpus, rows = [], [], []
    with VadEngine() as engine:
        for i in range(repeats + 1):
            batches, done = engine.batches_run, engine.frames_run
            wall, cpu = time.perf_counter(), time.process_time()
            asyncio.run(engine_round(engine, frames, streams, steps))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            count = engine.frames_run - done
            if i:
                walls.append(wall / count)
                cpus.append(cpu / count)
                rows.append(count / (engine.batches_run - batches))
    return statistics.median(walls) * 1e6, statistics.median(cpus) * 1e6, statistics.median(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    frames = speech_frames()
    model = SileroVad()

    print("model: us per stream-frame (median)")
    print(f"{'streams':>8} {'batched':>9} {'unbatched':>10} {'speed-up':>9}")
    for streams in args.sizes:
        batched = model_batched(model, frames, streams, args.repeats)
        single = model_unbatched(model, frames, streams, args.repeats)
        print(f"{streams:>8} {batched:>9.1f} {single:>10.1f} {single / batched:>8.2f}x")

    print()
    print("engine, 3-frame chunks on an event loop: us per stream-frame (median)")
    print(f"{'streams':>8} {'wall':>9} {'cpu':>9} {'rows/call':>10}")
    for streams in args.sizes:
        wall, cpu, rows = engine_cost(frames, streams, max(3, args.repeats // 2))
        print(f"{streams:>8} {wall:>9.1f} {cpu:>9.1f} {rows:>10.1f}")


if __name__ == "__main__":
    main()
