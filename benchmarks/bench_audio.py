"""Cost of the audio front end per second of audio, fed as a client would: 100 ms chunks.

Run with ``python benchmarks/bench_audio.py``; prints the median of several runs, in
microseconds of CPU per second of audio (lower is better; 1e6 would be real time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from streamer.audio.decode import Decoder
from streamer.audio.formats import AudioFormat, Encoding
from streamer.audio.resample import Resampler

CHUNK_S = 0.1


def time_stream(make: Callable[[], Callable[[], object]], chunks: int, runs: int) -> float:
    """Median over ``runs`` of the seconds one fresh pipeline takes for ``chunks`` chunks."""
    results = []
    for _ in range(runs):
        step = make()
        start = time.perf_counter()
        for _ in range(chunks):
            step()
        results.append(time.perf_counter() - start)
    return statistics.median(results)


def bench_decode(fmt: AudioFormat, seconds: float, runs: int) -> float:
    frames = round(fmt.sample_rate * CHUNK_S)
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, frames * fmt.frame_bytes, dtype=np.uint8).tobytes()

    def make() -> Callable[[], object]:
        decoder = Decoder(fmt)
        return lambda: decoder.feed(chunk)

    chunks = round(seconds / CHUNK_S)
    return time_stream(make, chunks, runs) / (chunks * CHUNK_S)


def bench_resample(in_rate: int, out_rate: int, seconds: float, runs: int) -> float:
    n = round(in_rate * CHUNK_S)
    chunk = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / in_rate)).astype(np.float32)

    def make() -> Callable[[], object]:
        resampler = Resampler(in_rate, out_rate)
        return lambda: resampler.process(chunk)

    chunks = round(seconds / CHUNK_S)
    return time_stream(make, chunks, runs) / (chunks * CHUNK_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="audio per run")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[], float]]] = [
        (
            "decode s16 16 kHz mono",
            lambda: bench_decode(AudioFormat(1, 16000, 16, False), args.seconds, args.runs),
        ),
        (
            "decode s16 48 kHz stereo",
            lambda: bench_decode(AudioFormat(2, 48000, 16, False), args.seconds, args.runs),
        ),
        (
            "decode mu-law 8 kHz mono",
            lambda: bench_decode(
                AudioFormat(1, 8000, 8, False, Encoding.MULAW), args.seconds, args.runs
            ),
        ),
        (
            "resample 48 kHz -> 16 kHz",
            lambda: bench_resample(48000, 16000, args.seconds, args.runs),
        ),
        ("resample 8 kHz -> 16 kHz", lambda: bench_resample(8000, 16000, args.seconds, args.runs)),
    ]
    print(f"100 ms chunks, {args.seconds:g} s of audio a run, median of {args.runs} runs")
    for name, bench in cases:
        print(f"{name:28s} {bench() * 1e6:10.1f} µs per audio-second")


if __name__ == "__main__":
    main()
