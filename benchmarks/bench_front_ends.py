"""Speech-end-to-final delay of the front-ends on the same audio, side by side in one run:
``/api/v1/segmented`` (v1 protocol), ``/v1/realtime`` (OpenAI Realtime, server VAD) and
``/v1/twilio`` (Media Streams, results read by a subscriber of the call).

Starts a server of its own (the test model, Silero VAD), then for each concurrency level
runs each route in turn: ``N`` streams, started over ``--ramp`` seconds, each sending the
same recording as μ-law 8 kHz in 20 ms messages at real-time pace. A final's delay is its
arrival minus the send time of the message that held its last sample (the end of speech
the segmenter cut at, plus the silence it waits for: the same on every route, so what
differs is each front-end's own cost).

    python benchmarks/bench_front_ends.py [--streams 1 100] [--audio tests/fixtures/audio/jfk.wav]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from twilio_calls import FRAME, RATE, Call, messages, mulaw
from websockets.asyncio.client import connect

HOST = "127.0.0.1"
ROUTES = ("segmented", "realtime", "twilio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = directory / "streamer.toml"
    config.write_text('log_level = "warning"\n[server]\nmax_streams = 1000\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamer.cli.main", "serve", "--host", HOST),
            *("--port", str(port), "--grpc-port", "0", "--config", str(config)),
        ],
        stdout=(directory / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/api/v1/health", timeout=1):
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


class Clock:
    """Send times of a stream's 20 ms messages; a final's delay from its end time."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    def delay(self, end_seconds: float, arrived: float) -> float:
        index = min(len(self.sent) - 1, max(0, int(end_seconds * RATE) // FRAME))
        return arrived - self.sent[index]


async def pace(frames: list[bytes], send, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    began = loop.time()
    for n, frame in enumerate(frames):
        if (wait := began + n * FRAME / RATE - loop.time()) > 0:
            await asyncio.sleep(wait)
        clock.sent.append(time.monotonic())
        await send(frame)


async def final_delays(events: AsyncIterable[str | bytes], clock: Clock) -> list[float]:
    """Each final's delay, from v1 events read until ``done``."""
    delays: list[float] = []
    async for text in events:
        event = json.loads(text)
        if event["type"] == "segment" and event["is_final"]:
            delays.append(clock.delay(event["end_time"], time.monotonic()))
        elif event["type"] == "done":
            break
    return delays


async def segmented(port: int, frames: list[bytes]) -> list[float]:
    clock = Clock()
    fmt = {"channels": 1, "sample_rate": 8000, "bit_depth": 8, "encoding": "mulaw"}
    async with connect(f"ws://{HOST}:{port}/api/v1/segmented") as ws:
        await ws.send(json.dumps({"request": "start", "format": fmt}))
        assert json.loads(await ws.recv())["type"] == "ready"

        async def send() -> None:
            await pace(frames, ws.send, clock)
            await ws.send(json.dumps({"request": "stop"}))

        sender = asyncio.create_task(send())
        delays = await final_delays(ws, clock)
        await sender
    return delays


async def realtime(port: int, frames: list[bytes]) -> list[float]:
    clock, delays, ends = Clock(), [], {}
    async with connect(f"ws://{HOST}:{port}/v1/realtime?intent=transcription") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        update = {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass

        async def append(frame: bytes) -> None:
            audio = base64.b64encode(frame).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

        sender = asyncio.create_task(pace(frames, append, clock))
        quiet = 0.0
        while quiet < 2.0:  # the session ends 2 s after the audio with nothing more
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                quiet = quiet + 0.5 if sender.done() else 0.0
                continue
            event = json.loads(text)
            if event["type"] == "input_audio_buffer.speech_stopped":
                ends[event["item_id"]] = event["audio_end_ms"] / 1000
            elif event["type"] == "conversation.item.input_audio_transcription.completed":
                end = ends.get(event["item_id"], len(frames) * FRAME / RATE)
                delays.append(clock.delay(end, time.monotonic()))
        await sender
    return delays


async def twilio(port: int, frames: list[bytes], n: int) -> list[float]:
    clock = Clock()
    sid = f"{n:06d}{random.getrandbits(64):016x}"  # new ids each run: no replay of another
    call = Call(call_sid=f"CAbench{sid}", stream_sid=f"MZbench{sid}")
    sequence = messages(call, {"inbound": b"".join(frames)})
    path = f"/v1/twilio/streams/{call.stream_sid}/events"
    async with connect(f"ws://{HOST}:{port}{path}") as events:
        await asyncio.sleep(0.05)
        async with connect(f"ws://{HOST}:{port}/v1/twilio") as ws:
            head = [t for _, t in sequence[:2]]
            media = [t for _, t in sequence[2:] if '"media"' in t[:40]]
            stop = sequence[-1][1]
            for text in head:
                await ws.send(text)

            async def send() -> None:
                await pace(media, ws.send, clock)  # type: ignore[arg-type]
                await ws.send(stop)

            sender = asyncio.create_task(send())
            delays = await final_delays(events, clock)
            await sender
    return delays


async def level(port: int, route: str, n: int, frames: list[bytes], ramp: float) -> list[float]:
    async def one(i: int) -> list[float]:
        await asyncio.sleep(ramp * i / max(1, n))
        if route == "segmented":
            return await segmented(port, frames)
        if route == "realtime":
            return await realtime(port, frames)
        return await twilio(port, frames, i)

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"  {route} x{n}: {len(failed)} streams failed: {failed[0]!r}", file=sys.stderr)
    return [d for r in results if not isinstance(r, BaseException) for d in r]


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def main(args: argparse.Namespace) -> None:
    audio = mulaw(Path(args.audio), seconds=None)
    audio += b"\xff" * RATE  # a second of silence after the speech
    frames = [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]
    with tempfile.TemporaryDirectory() as directory:
        process, port = serve(Path(directory))
        try:
            rows: list[tuple[str, int, list[float], float]] = []
            for n in args.streams:
                for route in ROUTES:
                    began = time.monotonic()
                    delays = await level(port, route, n, frames, args.ramp)
                    took = time.monotonic() - began
                    rows.append((route, n, delays, took))
                    if not delays:
                        print(f"{route:>9} x{n:<4} no finals", flush=True)
                        continue
                    print(
                        f"{route:>9} x{n:<4} finals {len(delays):5}  median "
                        f"{statistics.median(delays) * 1000:6.0f} ms  p90 "
                        f"{quantile(delays, 0.9) * 1000:6.0f} ms  max {max(delays) * 1000:6.0f} ms"
                        f"  ({took:.0f} s)",
                        flush=True,
                    )
        finally:
            process.terminate()
            process.wait(20)
    if args.json:
        body = [
            {"route": r, "streams": n, "finals": len(d), "delays": d, "seconds": t}
            for r, n, d, t in rows
        ]
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(body))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--audio", default="tests/fixtures/audio/jfk.wav")
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--json", default=None, help="write every delay to this file")
    asyncio.run(main(parser.parse_args()))
