"""How soon a client that drops its connection frees its queued work, on a real server.

Starts a server whose test model takes ``--delay`` seconds a call (two workers), opens a
stream on the simple route (1 s chunks), sends ``--seconds`` of speech at once, waits until
inferences are queued, then closes the socket (a TCP FIN, no closing handshake) and polls
``/api/v1/health`` until no inference is queued and no stream is live.

    python benchmarks/bench_dropped.py [--seconds 8] [--delay 0.5] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from streamer.client import load_audio
from streamer.spawn import spawn_server

AUDIO = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio" / "jfk.wav"


async def once(port: int, seconds: int) -> float:
    audio = load_audio(AUDIO)
    data = (audio.data * (seconds // 11 + 1))[: seconds * audio.bytes_per_second]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def health() -> dict[str, Any]:
            answer: dict[str, Any] = (await http.get("/api/v1/health")).json()
            return answer

        async with connect(f"ws://127.0.0.1:{port}/api/v1/simple") as ws:
            await ws.send(json.dumps({"request": "start", "format": audio.format}))
            await ws.recv()
            await ws.send(data)
            for _ in range(1000):
                if (await health())["queued_inferences"]:
                    break
                await asyncio.sleep(0.005)
            ws.transport.close()
            closed = time.monotonic()
        for _ in range(100_000):
            now = await health()
            if now["queued_inferences"] == 0 and sum(now["streams"].values()) == 0:
                return time.monotonic() - closed
            await asyncio.sleep(0.005)
    raise RuntimeError("the stream was never freed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = {
        "STREAMER_MODEL__DELAY": str(args.delay),
        "STREAMER_INFERENCE__WORKERS": "2",
        "STREAMER_SERVER__WORKERS": "1",
    }
    with spawn_server(env=env) as server:
        times = [asyncio.run(once(server.port, args.seconds)) for _ in range(args.runs)]
    print(
        f"{args.seconds} s of audio queued, {args.delay} s a call: freed after "
        f"median {statistics.median(times):.3f} s "
        f"(runs: {', '.join(f'{t:.3f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
