"""Silero VAD cost per stream-frame: batched across streams versus one stream per call.

Two tables, both in microseconds per 512-sample frame (32 ms of audio at 16 kHz), medians:

- model: ``SileroVad.run`` alone, ``B`` streams' frames in one call versus the same frames
  one call each;
- engine: ``N`` streams sending 3-frame chunks (about 100 ms) concurrently through
  ``VadEngine`` on an event loop: wall and process CPU time (loop and engine thread), and
  the rows its steps averaged.

With ``--paced``, a third: the model alone, run as a real-time server must run it, in
steps of three calls (a 100 ms message's frames) of ``R`` rows with the engine's step
interval between steps, against the same calls back to back; CPU of the calling thread
per frame, the two alternated. ``streamer bench``'s floor is the model back to back at 256
rows; a server serving live audio cannot run it back to back below its capacity.

    python benchmarks/bench_vad.py [--sizes 1 8 32 128 256] [--repeats 7]
    python benchmarks/bench_vad.py --paced [--paced-rows 19 38 76] [--gap-ms 32]
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


def model_paced(
    model: SileroVad, frames: Frames, rows: int, gap: float, seconds: float = 4.0
) -> float:
    """CPU of this thread per frame, running steps of three calls of ``rows`` rows with
    ``gap`` seconds of sleep between steps, for ``seconds``."""
    state = np.zeros((2, rows, 128), dtype=np.float32)
    context = np.zeros((rows, CONTEXT_SAMPLES), dtype=np.float32)
    step = 0
    for _ in range(6):  # warm up
        _, state, context = model.run(rows_at(frames, step, rows), state, context)
        step += 1
    count = 0
    cpu = time.thread_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(3):
            _, state, context = model.run(rows_at(frames, step, rows), state, context)
            step += 1
            count += rows
        if gap:
            time.sleep(gap)
    return (time.thread_time() - cpu) / count * 1e6


def paced(args: argparse.Namespace, model: SileroVad, frames: Frames) -> None:
    gap = args.gap_ms / 1000
    print(f"model paced: three calls a step, {args.gap_ms:g} ms between steps, against")
    print("back to back: us of CPU per stream-frame (median of the rounds)")
    print(f"{'rows':>6} {'back to back':>13} {'paced':>9} {'paced/b2b':>10}")
    for rows in args.paced_rows:
        tight, spaced = [], []
        for _ in range(args.rounds):
            tight.append(model_paced(model, frames, rows, 0.0))
            spaced.append(model_paced(model, frames, rows, gap))
        a, b = statistics.median(tight), statistics.median(spaced)
        print(f"{rows:>6} {a:>13.1f} {b:>9.1f} {b / a:>9.2f}x")
    floor = statistics.median(
        model_batched(model, frames, 256, args.repeats) for _ in range(args.rounds)
    )
    print(f"the floor's VAD (back to back, 256 rows, wall): {floor:.1f} us per stream-frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--paced", action="store_true", help="the paced table alone")
    parser.add_argument("--paced-rows", type=int, nargs="+", default=[19, 38, 76])
    parser.add_argument("--gap-ms", type=float, default=32.0, help="the engine's step interval")
    parser.add_argument("--rounds", type=int, default=3, help="paced: alternated rounds")
    args = parser.parse_args()
    frames = speech_frames()
    model = SileroVad()
    if args.paced:
        paced(args, model, frames)
        return

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
