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
import time
from collections import Counter

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.bench.runner import CpuMeter
from streamer.spawn import spawn_server

KEEPALIVE = '{"request": "keepalive"}'
BATCH = 100


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
        env = {"STREAMER_SERVER__WORKERS": "1"}
        if limit is not None:
            env["STREAMER_SERVER__MAX_MESSAGES_PER_SECOND"] = limit
        with spawn_server(env=env) as server:
            meter = CpuMeter(server.pid)
            before = meter.seconds() or 0.0
            began = time.monotonic()
            sent, closes = asyncio.run(
                flood(server.url("simple"), args.seconds, args.rate, not args.no_reconnect)
            )
            wall = time.monotonic() - began
            cpu = (meter.seconds() or 0.0) - before
        print(
            f"{label}: server CPU {cpu:.2f} s in {wall:.1f} s ({100 * cpu / wall:.0f}% of a "
            f"core); client sent {sent} keepalives ({sent / wall:.0f}/s) over "
            f"{sum(closes.values())} connections; closes {dict(closes)}"
        )


if __name__ == "__main__":
    main()
