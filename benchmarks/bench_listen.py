"""Final delay through ``/v1/listen`` (Deepgram's API) against ``/api/v1/segmented``.

Starts one server (the test model by default), then for each stream count streams real
speech (``jfk.wav``, 11 s) in real time, 100 ms a message, on that many connections at
once, through one route then the other (the order alternating), ``--runs`` times. A final's delay is
when it arrived less when the end of its audio was sent (the sender is paced, so that is
the stream's start plus the final's end time). Prints the median and 95th percentile per
route and stream count, side by side.

    python benchmarks/bench_listen.py [--streams 1 100] [--runs 2] [--model test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import soundfile as sf
import websockets

from streamer.spawn import spawn_server

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "jfk.wav"
RATE = 16000
STEP = RATE // 10 * 2  # 100 ms of 16-bit mono


async def one_stream(url: str, route: str, audio: bytes) -> list[float]:
    """Stream ``audio`` in real time; the delay of each final, in seconds."""
    delays: list[float] = []
    if route == "listen":
        url = f"{url}/v1/listen?encoding=linear16&sample_rate={RATE}"
    else:
        url = f"{url}/api/v1/segmented"
    async with websockets.connect(url, max_queue=None) as ws:
        if route == "segmented":
            fmt = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
            await ws.send(json.dumps({"request": "start", "format": fmt}))
        began = time.monotonic()

        async def receive() -> None:
            async for message in ws:
                now = time.monotonic()
                body = json.loads(message)
                if route == "listen" and body.get("type") == "Results" and body["is_final"]:
                    delays.append(now - began - (body["start"] + body["duration"]))
                elif body.get("type") == "segment" and body.get("is_final"):
                    delays.append(now - began - body["end_time"])
                elif body.get("type") == "done":
                    return  # v1 keeps the connection open for another stream

        receiver = asyncio.create_task(receive())
        for i, offset in enumerate(range(0, len(audio), STEP)):
            await ws.send(audio[offset : offset + STEP])
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 - time.monotonic()))
        stop = {"type": "CloseStream"} if route == "listen" else {"request": "stop"}
        await ws.send(json.dumps(stop))
        await asyncio.wait_for(receiver, 60)
    return delays


async def run_once(url: str, route: str, streams: int, audio: bytes) -> list[float]:
    results = await asyncio.gather(*(one_stream(url, route, audio) for _ in range(streams)))
    return [d for r in results for d in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default="test")
    args = parser.parse_args()
    samples, rate = sf.read(SPEECH, dtype="int16")
    assert rate == RATE
    audio = samples.tobytes()
    with spawn_server(env={"STREAMER_INFERENCE__MODEL": args.model}) as server:
        url = f"ws://{server.host}:{server.port}"
        figures: dict[tuple[str, int], list[float]] = {}
        for streams in args.streams:
            for run in range(args.runs):
                order = ("listen", "segmented") if run % 2 == 0 else ("segmented", "listen")
                for route in order:
                    delays = asyncio.run(run_once(url, route, streams, audio))
                    figures.setdefault((route, streams), []).extend(delays)
        print(f"final delay, seconds (model {args.model}, {args.runs} runs, jfk.wav 11 s)")
        print(f"{'route':<22}{'streams':>8}{'finals':>8}{'median':>9}{'p95':>9}")
        for (route, streams), delays in figures.items():
            name = "/v1/listen" if route == "listen" else "/api/v1/segmented"
            p95 = statistics.quantiles(delays, n=20)[-1] if len(delays) > 1 else delays[0]
            median = statistics.median(delays)
            print(f"{name:<22}{streams:>8}{len(delays):>8}{median:>9.3f}{p95:>9.3f}")


if __name__ == "__main__":
    main()
