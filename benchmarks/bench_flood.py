"""A keepalive flood against a real server: the server's CPU while one client tries to send
60,000 ``keepalive`` messages a second, reconnecting whenever it is closed.

Starts a server with ``[server] max_messages_per_second`` at its default (200) and one with
the limit off (0), side by side, floods each for ``--seconds`` and reports the server
process's CPU time over the flood (from ``/proc``), the messages the client got out, the
connections it needed and how they were closed.

    python benchmarks/bench_flood.py [--seconds 6] [--rate 60000] [--no-reconnect]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

KEEPALIVE = '{"request": "keepalive"}'
BATCH = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, limit: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    if limit is not None:
        env["STREAMER_SERVER__MAX_MESSAGES_PER_SECOND"] = limit
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamer.cli.main", "serve"),
            *("--host", "127.0.0.1", "--port", str(port), "--no-grpc", "--workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def flood(url: str, seconds: float, rate: float, reconnect: bool) -> tuple[int, Counter[str]]:
    """Send keepalives at up to ``rate`` a second for ``seconds``, reconnecting when closed
    (with ``reconnect``; otherwise idle once closed)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    sent = 0
    closes: Counter[str] = Counter()
    began = loop.time()
    while loop.time() < end:
        try:
            async with connect(url) as ws:
                with contextlib.suppress(ConnectionClosed):
                    while loop.time() < end:
                        for _ in range(BATCH):
                            await ws.send(KEEPALIVE)
                        sent += BATCH
                        ahead = sent / rate - (loop.time() - began)
                        await asyncio.sleep(max(0.0, ahead))
            closes[f"{ws.close_code} {ws.close_reason}".strip()] += 1
            if not reconnect:
                await asyncio.sleep(max(0.0, end - loop.time()))
        except (OSError, InvalidStatus) as error:
            closes[type(error).__name__] += 1
            await asyncio.sleep(0.01)
    return sent, closes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=60_000.0)
    parser.add_argument("--no-reconnect", action="store_true", help="one connection only")
    args = parser.parse_args()
    for label, limit in (("max_messages_per_second=200 (default)", None), ("no limit (0)", "0")):
        port = free_port()
        server = start_server(port, limit)
        try:
            before = cpu_seconds(server.pid)
            began = time.monotonic()
            sent, closes = asyncio.run(
                flood(
                    f"ws://127.0.0.1:{port}/api/v1/simple",
                    args.seconds,
                    args.rate,
                    not args.no_reconnect,
                )
            )
            wall = time.monotonic() - began
            cpu = cpu_seconds(server.pid) - before
        finally:
            server.terminate()
            server.wait(15)
        print(
            f"{label}: server CPU {cpu:.2f} s in {wall:.1f} s ({100 * cpu / wall:.0f}% of a "
            f"core); client sent {sent} keepalives ({sent / wall:.0f}/s) over "
            f"{sum(closes.values())} connections; closes {dict(closes)}"
        )


if __name__ == "__main__":
    main()
