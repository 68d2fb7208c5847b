"""Memory under churn: does a server's RSS stay flat while streams come and go?

Starts a server of its own (one front-end process, the test model) and runs, for
``--duration`` seconds:

- ``--clients`` (5) clients, each on one WebSocket, cycling: ``start``, ``--audio``
  seconds of real speech (unpaced), ``stop``, every result and ``done``, again;
- one client that reconnects every second: a new connection, one such stream, close.

Nothing bad is sent. Every ``--every`` seconds it samples the server's RSS, open file
descriptors and threads (``/proc/<pid>``), and at the end prints the samples, the streams
run, and RSS at the end against RSS after ``--warmup`` seconds.

With ``--tracemalloc`` the server traces its allocations (``STREAMER_TRACEMALLOC_DIR``,
a snapshot every ``--every`` seconds) and the report adds the allocation sites that grew
most between the first snapshot after warm-up and the last: a leak shows as one site
growing in step with the streams run; the allocator settling, as RSS growing with no
site to match. (Tracing slows the server; compare RSS from runs without it.)

    python benchmarks/churn_soak.py [--duration 1800] [--warmup 120] [--every 10]
        [--clients 5] [--audio 1.0] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "jfk.wav"  # 16 kHz mono
RATE = 16000
FORMAT = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
MESSAGE_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and Threads from ``/proc/<pid>/status``, and open descriptors."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "Threads:")):
            name, value = line.split(":", 1)
            out[name] = int(value.split()[0])
    return out


def start_server(directory: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    config = directory / "streamer.toml"
    config.write_text(
        # Memory is measured here, not shedding: a busy machine should not refuse streams.
        'log_level = "warning"\n[server]\nmax_loop_lag_ms = 10000\nmax_vad_delay_ms = 10000\n'
        "max_queue_wait_ms = 60000\n[stream]\nidle_seconds = 0\n"
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamer.cli.main", "serve", "--no-grpc", "--workers", "1"),
            *("--host", HOST, "--port", str(port), "--config", str(config)),
        ],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}, **env},
        stdout=subprocess.DEVNULL,
        stderr=(directory / "server.log").open("wb"),
    )
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/api/v1/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the server did not start: {directory / 'server.log'}")


@dataclass
class Counts:
    streams: int = 0
    connections: int = 0
    failures: list[str] = field(default_factory=list)
    """Error events, by code."""
    closed: list[str] = field(default_factory=list)
    """Connections the server ended early (reason), each reconnected after a pause."""


async def one_stream(ws: ClientConnection, audio: bytes, counts: Counts) -> None:
    await ws.send(json.dumps({"request": "start", "format": FORMAT}))
    step = int(RATE * MESSAGE_SECONDS) * 2
    for offset in range(0, len(audio), step):
        await ws.send(audio[offset : offset + step])
    await ws.send(json.dumps({"request": "stop"}))
    while True:
        event = json.loads(await ws.recv())
        if event["type"] == "error":
            counts.failures.append(event.get("code", "?"))
        if event["type"] == "done":
            break
    counts.streams += 1


async def cycling(url: str, audio: bytes, until: float, counts: Counts) -> None:
    """One connection, streams one after another until ``until`` (a connection the server
    ends, overloaded say, is counted and opened again)."""
    while time.monotonic() < until:
        try:
            async with connect(url, max_size=None) as ws:
                counts.connections += 1
                while time.monotonic() < until:
                    await one_stream(ws, audio, counts)
        except ConnectionClosed as closed:
            counts.closed.append(closed.rcvd.reason if closed.rcvd else "no close frame")
            await asyncio.sleep(0.5)


async def reconnecting(url: str, audio: bytes, until: float, counts: Counts) -> None:
    """A new connection every second, one stream on each."""
    while (now := time.monotonic()) < until:
        try:
            async with connect(url, max_size=None) as ws:
                counts.connections += 1
                await one_stream(ws, audio, counts)
        except ConnectionClosed as closed:
            counts.closed.append(closed.rcvd.reason if closed.rcvd else "no close frame")
        await asyncio.sleep(max(0.0, now + 1.0 - time.monotonic()))


Samples = list[tuple[float, dict[str, int]]]


async def sample(pid: int, every: float, until: float, out: Samples) -> None:
    began = time.monotonic()
    while time.monotonic() < until:
        out.append((time.monotonic() - began, proc_status(pid)))
        await asyncio.sleep(every)
    out.append((time.monotonic() - began, proc_status(pid)))


async def churn(args: argparse.Namespace, port: int, pid: int) -> tuple[Counts, Samples]:
    samples, _ = sf.read(SPEECH, dtype="int16")
    audio = samples[: int(RATE * args.audio)].astype("<i2").tobytes()
    url = f"ws://{HOST}:{port}/api/v1/segmented"
    until = time.monotonic() + args.duration
    counts = Counts()
    seen: Samples = []
    await asyncio.gather(
        sample(pid, args.every, until, seen),
        reconnecting(url, audio, until, counts),
        *(cycling(url, audio, until, counts) for _ in range(args.clients)),
    )
    return counts, seen


def grown_sites(directory: Path, warmup: float, every: float, top: int) -> list[str]:
    files = sorted(directory.glob("*.snapshot"))
    if len(files) < 2:
        return ["(fewer than two snapshots: run longer than --every past --warmup)"]
    first = files[min(len(files) - 2, max(0, int(warmup / every) - 1))]
    old = tracemalloc.Snapshot.load(str(first))
    new = tracemalloc.Snapshot.load(str(files[-1]))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = new.filter_traces(filters).compare_to(old.filter_traces(filters), "lineno")
    return [f"{first.name} -> {files[-1].name}", *(str(s) for s in stats[:top])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of churn")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before the baseline")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=5, help="clients cycling streams")
    parser.add_argument("--audio", type=float, default=1.0, help="seconds of speech a stream")
    parser.add_argument("--tracemalloc", action="store_true", help="trace the server's heap")
    parser.add_argument("--top", type=int, default=15, help="allocation sites to show")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="churn-soak-") as tmp:
        directory = Path(tmp)
        env: dict[str, str] = {}
        if args.tracemalloc:
            env = {
                "STREAMER_TRACEMALLOC_DIR": str(directory / "snapshots"),
                "STREAMER_TRACEMALLOC_SECONDS": str(args.every),
            }
        port = free_port()
        server = start_server(directory, port, env)
        try:
            began = time.monotonic()
            counts, seen = asyncio.run(churn(args, port, server.pid))
            elapsed = time.monotonic() - began
            sites = grown_sites(directory / "snapshots", args.warmup, args.every, args.top)
        finally:
            server.terminate()
            server.wait(30)

    print(f"{'t (s)':>8} {'RSS (MiB)':>10} {'fds':>5} {'threads':>8}")
    for at, status in seen:
        print(f"{at:8.0f} {status['VmRSS'] / 1024:10.1f} {status['fds']:5d} {status['Threads']:8d}")
    rate = counts.streams / elapsed * 60
    print(
        f"\n{counts.streams} streams on {counts.connections} connections in {elapsed:.0f} s "
        f"({rate:.0f} a minute); error events: {len(counts.failures)} "
        f"{sorted(set(counts.failures))}; connections ended early: {len(counts.closed)} "
        f"{sorted(set(counts.closed))}"
    )
    base = next((s for t, s in seen if t >= args.warmup), seen[0][1])
    end = seen[-1][1]
    print(
        f"RSS after warm-up ({args.warmup:g} s): {base['VmRSS'] / 1024:.1f} MiB; at the end: "
        f"{end['VmRSS'] / 1024:.1f} MiB ({(end['VmRSS'] - base['VmRSS']) / 1024:+.1f}); "
        f"fds {base['fds']} -> {end['fds']}; threads {base['Threads']} -> {end['Threads']}"
    )
    if args.tracemalloc:
        print("\nallocation sites that grew most (tracemalloc):")
        print("\n".join(f"  {line}" for line in sites))


if __name__ == "__main__":
    main()
