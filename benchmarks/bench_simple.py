"""Simple route, speedy model: one stream sent as fast as possible.

Reports audio-seconds processed per wall-second and the server's CPU seconds per
audio-second (decode, resample, framework; the test model does no work).

    python benchmarks/bench_simple.py [--seconds 120] [--runs 3] [--file WAV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",  # one process: its CPU is what is measured
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


async def one_stream(url: str, pcm: bytes, rate: int, chunk: int) -> tuple[float, int]:
    async with connect(url, compression=None, max_size=None) as ws:
        start = time.perf_counter()
        fmt = {"channels": 1, "sample_rate": rate, "bit_depth": 16}
        await ws.send(json.dumps({"request": "start", "format": fmt}))

        async def send() -> None:
            for i in range(0, len(pcm), chunk):
                await ws.send(pcm[i : i + chunk])
            await ws.send(json.dumps({"request": "stop", "disconnect": True}))

        sender = asyncio.create_task(send())
        count = 0
        async for message in ws:
            event = json.loads(message)
            if event["type"] == "segment":
                count += event["count"]
            if event["type"] == "done":
                break
        await sender
        return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=ROOT / "tests/fixtures/audio/jfk.wav")
    parser.add_argument("--seconds", type=float, default=120.0, help="audio per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    args = parser.parse_args()

    audio, rate = sf.read(args.file, dtype="int16")
    reps = int(np.ceil(args.seconds * rate / len(audio)))
    pcm = np.tile(audio, reps)[: int(args.seconds * rate)].tobytes()
    audio_seconds = len(pcm) / 2 / rate
    chunk = int(rate * args.chunk_ms / 1000) * 2

    port = free_port()
    server = start_server(port)
    url = f"ws://127.0.0.1:{port}/api/v1/simple"
    speeds, cpus = [], []
    try:
        asyncio.run(one_stream(url, pcm[: rate * 2], rate, chunk))  # warm up
        for _ in range(args.runs):
            cpu0 = cpu_seconds(server.pid)
            wall, count = asyncio.run(one_stream(url, pcm, rate, chunk))
            cpu = cpu_seconds(server.pid) - cpu0
            expected = round(audio_seconds * 16000)
            assert abs(count - expected) <= 1, (count, expected)
            speeds.append(audio_seconds / wall)
            cpus.append(cpu / audio_seconds)
    finally:
        server.terminate()
        server.wait(15)
    print(
        f"file {args.file.name} ({rate} Hz), {audio_seconds:.0f} s of audio per run, "
        f"{args.chunk_ms:.0f} ms frames, {args.runs} runs"
    )
    print(
        f"throughput: {statistics.median(speeds):.0f} audio-s per wall-s "
        f"(min {min(speeds):.0f}, max {max(speeds):.0f})"
    )
    print(
        f"server CPU: {statistics.median(cpus) * 1000:.2f} ms per audio-second "
        f"(min {min(cpus) * 1000:.2f}, max {max(cpus) * 1000:.2f})"
    )


if __name__ == "__main__":
    main()
