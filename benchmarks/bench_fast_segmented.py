"""Segmented route, speedy model: one long stream of real speech sent as fast as possible.

Builds about five minutes of speech from the test recordings (each file in turn, with a
second of silence between them), starts a server, streams it once with the client library
(``streamer.client.stream_file``, unpaced, 100 ms messages by default) and reports
audio-seconds per wall-second, from ``start`` to ``done``. Every final segment must match
the spans the same decoder, VAD and segmenter give offline (``streamer.bench.expected``);
lost or extra finals, a missing ``done`` and the close code are reported.

    python benchmarks/bench_fast_segmented.py [--minutes 5] [--runs 3] [--chunk-ms 100]
        [--rate 16000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from streamer.bench.expected import ExpectedResults
from streamer.client import load_audio, stream_file
from streamer.spawn import spawn_server

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
FILES = ("jfk.wav", "harvard_16k.wav")  # real speech at 16 kHz
RATE = 16000


def speech(minutes: float, rate: int) -> bytes:
    """A mono WAV at ``rate`` of the recordings in turn, a second of silence after each."""
    parts = []
    for name in FILES:
        audio, own_rate = sf.read(AUDIO / name, dtype="int16")
        assert own_rate == RATE, name
        parts += [audio, np.zeros(RATE, dtype=np.int16)]
    once = np.concatenate(parts)
    whole = np.tile(once, int(np.ceil(minutes * 60 * RATE / len(once))))
    if rate != RATE:
        whole = np.round(soxr.resample(whole, RATE, rate)).astype(np.int16)
    out = io.BytesIO()
    sf.write(out, whole, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--rate", type=int, default=RATE, help="sample rate sent (resampled)")
    args = parser.parse_args()

    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        wav.write(speech(args.minutes, args.rate))
        wav.flush()
        audio = load_audio(wav.name)
    expected = ExpectedResults().get("speech", audio.data, audio.format, segmented=True)
    assert expected.spans is not None
    want = list(expected.spans[0])
    chunk = int(audio.sample_rate * args.chunk_ms / 1000) * audio.frame_bytes

    speeds: list[float] = []
    failed = False
    with spawn_server() as server:
        url = server.url("segmented")
        for run in range(args.runs):
            result = asyncio.run(stream_file(url, audio, chunk_bytes=chunk, results_timeout=600.0))
            finals = [
                (round(e["start_time"], 6), round(e["end_time"], 6))
                for e in result.segments
                if e.get("is_final", True)
            ]
            done = result.done_seconds is not None
            ok = done and finals == want
            failed |= not ok
            speed = audio.duration / result.done_seconds if result.done_seconds else 0.0
            speeds.append(speed)
            print(
                f"run {run + 1}: {speed:.1f}x real time, {len(finals)}/{len(want)} finals"
                f"{'' if finals == want else ' (MISMATCH)'}, done={'yes' if done else 'NO'}, "
                f"close {result.close_code} {result.close_reason!r}, "
                f"errors {[e.get('code') for e in result.errors]}"
            )
    print(
        f"{audio.duration:.0f} s of speech at {audio.sample_rate} Hz, "
        f"{args.chunk_ms:.0f} ms messages, unpaced: "
        f"median {statistics.median(speeds):.1f} audio-s per wall-s "
        f"(min {min(speeds):.1f}, max {max(speeds):.1f})"
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
