"""End-of-turn and ForceEndpoint delays through ``/v3/ws`` (AssemblyAI's API) against
``/api/v1/segmented``.

Starts one server (Whisper by default: the test model gives no text, so no ``Turn``),
then for each stream count streams real speech (``jfk.wav``, 11 s) in real time, 100 ms a
message, on that many connections at once, through one route then the other (the order
alternating), ``--runs`` times. Each stream forces an end (``ForceEndpoint``; v1:
``finalize``) at ``--force-at`` seconds, mid-utterance.

- end-of-turn delay: when an end-of-turn arrived (``/v3/ws``: the formatted ``Turn``;
  v1: a final segment) less when the end of its last word was sent (the sender is paced,
  so that is the stream's start plus the word's end time): the pause that ends a turn
  is in it;
- force delay: when the first end after the forced one arrived less when it was sent.

Prints the median and 95th percentile per route and stream count, side by side.

    python benchmarks/bench_assemblyai.py [--streams 1 8] [--runs 2] [--model whisper]
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


async def one_stream(
    url: str, route: str, audio: bytes, force_at: float
) -> tuple[list[float], list[float]]:
    """Stream ``audio`` in real time; the end-of-turn delays and the force delay."""
    ends: list[float] = []
    forced: list[float] = []
    forced_sent: list[float] = []
    if route == "v3":
        url = f"{url}/v3/ws?sample_rate={RATE}&format_turns=true"
    else:
        url = f"{url}/api/v1/segmented"
    async with websockets.connect(url, max_queue=None) as ws:
        if route == "segmented":
            fmt = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
            # As /v3/ws asks for its streams: partial results and word times.
            start = {"format": fmt, "word_times": True, "interim_results": True}
            await ws.send(json.dumps({"request": "start", **start}))
        began = time.monotonic()

        async def receive() -> None:
            async for message in ws:
                now = time.monotonic()
                body = json.loads(message)
                end: float | None = None
                if body.get("type") == "Turn" and body["end_of_turn"]:
                    if body["turn_is_formatted"] and body["words"]:
                        end = body["words"][-1]["end"] / 1000
                elif body.get("type") == "segment" and body.get("is_final"):
                    if body.get("words"):  # as /v3/ws: from the end of the last word
                        end = body["words"][-1]["end"]
                elif body.get("type") in ("done", "Termination"):
                    return
                if end is None:
                    continue
                ends.append(now - began - end)
                if forced_sent and not forced:
                    forced.append(now - forced_sent[0])

        receiver = asyncio.create_task(receive())
        for i, offset in enumerate(range(0, len(audio), STEP)):
            await ws.send(audio[offset : offset + STEP])
            if not forced_sent and (i + 1) * 0.1 >= force_at:
                force = {"type": "ForceEndpoint"} if route == "v3" else {"request": "finalize"}
                await ws.send(json.dumps(force))
                forced_sent.append(time.monotonic())
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 - time.monotonic()))
        stop = {"type": "Terminate"} if route == "v3" else {"request": "stop"}
        await ws.send(json.dumps(stop))
        await asyncio.wait_for(receiver, 60)
    return ends, forced


async def run_once(
    url: str, route: str, streams: int, audio: bytes, force_at: float
) -> tuple[list[float], list[float]]:
    results = await asyncio.gather(
        *(one_stream(url, route, audio, force_at) for _ in range(streams))
    )
    return [d for r in results for d in r[0]], [d for r in results for d in r[1]]


def _figures(delays: list[float]) -> str:
    if not delays:
        return f"{0:>8}{'-':>9}{'-':>9}"
    p95 = statistics.quantiles(delays, n=20)[-1] if len(delays) > 1 else delays[0]
    return f"{len(delays):>8}{statistics.median(delays):>9.3f}{p95:>9.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default="whisper")
    parser.add_argument("--force-at", type=float, default=1.5, help="seconds into the audio")
    args = parser.parse_args()
    samples, rate = sf.read(SPEECH, dtype="int16")
    assert rate == RATE
    audio = samples.tobytes()
    with spawn_server(env={"STREAMER_INFERENCE__MODEL": args.model}) as server:
        url = f"ws://{server.host}:{server.port}"
        ends: dict[tuple[str, int], list[float]] = {}
        forces: dict[tuple[str, int], list[float]] = {}
        for streams in args.streams:
            for run in range(args.runs):
                order = ("v3", "segmented") if run % 2 == 0 else ("segmented", "v3")
                for route in order:
                    got = asyncio.run(run_once(url, route, streams, audio, args.force_at))
                    ends.setdefault((route, streams), []).extend(got[0])
                    forces.setdefault((route, streams), []).extend(got[1])
        print(f"seconds (model {args.model}, {args.runs} runs, jfk.wav 11 s)")
        print(f"{'route':<20}{'streams':>8}  {'end of turn: n, median, p95':<27}  force")
        for key, delays in ends.items():
            name = "/v3/ws" if key[0] == "v3" else "/api/v1/segmented"
            print(f"{name:<20}{key[1]:>8}  {_figures(delays)}  {_figures(forces[key])}")


if __name__ == "__main__":
    main()
