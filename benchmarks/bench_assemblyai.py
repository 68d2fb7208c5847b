"""End-of-turn and forced-end delays through ``/v3/ws`` (AssemblyAI's API) against
``/api/v1/segmented`` with the same turn detection.

Starts one server (Whisper by default: the test model gives no text, so no ``Turn``),
then for each stream count streams real speech (``jfk.wav``, 11 s) in real time, 100 ms a
message, on that many connections at once, through each route in turn (the order
reversed every other run), ``--runs`` times, in two phases:

- end of turn: nothing forced. Both routes end turns through the same turn stage with the
  same settings and the same model work: ``/v3/ws`` with its defaults (threshold 0.7,
  early end at 0.5, 1280 ms ``max_turn_silence``), v1 with that ``turn_detection`` and
  turns alone (``segments: false``), as ``/v3/ws`` asks for its streams;
- forced end: each stream forces an end at ``--force-at`` seconds, mid-utterance:
  ``ForceEndpoint``, and v1's ``finalize`` (which, with turn detection, ends the open
  turn the same way), both streams of turns alone.

- end of turn: when a turn's end arrived (``/v3/ws``: the formatted end-of-turn ``Turn``;
  v1: the ``turn`` event ``end``) less when the end of its last word was sent (the sender
  is paced, so that is the stream's start plus the word's end time): the pause that ends
  a turn is in it. Turns the model or the pause ended only (not the forced one, nor
  those the end of the audio flushes);
- forced end: when the turn's end the force brings arrived (``/v3/ws``: the formatted
  ``Turn``; v1: the ``turn`` event ``end``, trigger ``manual``) less when the force was
  sent.

Prints the count, P50 and P95 per route and stream count, side by side.

    python benchmarks/bench_assemblyai.py [--streams 1 8] [--runs 2] [--model whisper]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
import websockets

from streamer.spawn import spawn_server

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "jfk.wav"
RATE = 16000
STEP = RATE // 10 * 2  # 100 ms of 16-bit mono
TURNS = {"eot_threshold": 0.7, "eager_eot_threshold": 0.5, "eot_timeout_ms": 1280}
"""``/v3/ws``'s turn detection with AssemblyAI's defaults, as v1's ``turn_detection``."""
ROUTES = {"v3": "/v3/ws", "v1": "/api/v1/segmented"}


@dataclass
class Delays:
    """One route's delays at one stream count (seconds)."""

    ends: list[float] = field(default_factory=list)
    forced: list[float] = field(default_factory=list)


def _end_of(body: dict[str, Any]) -> tuple[str, float | None]:
    """What a message is (``turn``: a turn's end by the model or the pause, ``forced``:
    the final a force brings, ``done``, or ``other``), and its last word's end (s)."""
    kind = body.get("type")
    words = body.get("words") or []
    if kind == "Turn" and body["end_of_turn"] and body["turn_is_formatted"]:
        return "final", words[-1]["end"] / 1000 if words else None
    if kind == "turn" and body["event"] == "end":
        if body.get("trigger") == "manual":  # a finalize's, or the end of the audio's
            return "forced", None
        return "turn", words[-1]["end"] if words else None
    if kind in ("done", "Termination"):
        return "done", None
    return "other", None


async def one_stream(
    url: str, route: str, audio: bytes, force_at: float | None, into: Delays
) -> None:
    """Stream ``audio`` in real time, adding its delays to ``into``; ``force_at`` None:
    nothing forced, else when."""
    forced_sent: float | None = None
    stopping = False  # the ends a stop flushes are not the model's
    if route == "v3":
        url = f"{url}/v3/ws?sample_rate={RATE}&format_turns=true"
    else:
        url = f"{url}/api/v1/segmented"
    async with websockets.connect(url, max_queue=None) as ws:
        if route != "v3":
            fmt = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
            start = {"format": fmt, "word_times": True, "turn_detection": TURNS}
            start["segments"] = False  # turns alone, as /v3/ws asks for its streams
            await ws.send(json.dumps({"request": "start", **start}))
        began = time.monotonic()

        async def receive() -> None:
            forced_seen = False
            async for message in ws:
                now = time.monotonic()
                kind, end = _end_of(json.loads(message))
                if kind == "done":
                    return
                if kind == "final":  # /v3/ws: its first end after the force is the forced one
                    if forced_sent is not None and not forced_seen:
                        forced_seen = True
                        into.forced.append(now - forced_sent)
                        continue
                    kind = "turn"
                elif kind == "forced":
                    if forced_sent is not None and not forced_seen:
                        forced_seen = True
                        into.forced.append(now - forced_sent)
                    continue
                if kind == "turn" and end is not None and not stopping and force_at is None:
                    into.ends.append(now - began - end)

        receiver = asyncio.create_task(receive())
        for i, offset in enumerate(range(0, len(audio), STEP)):
            await ws.send(audio[offset : offset + STEP])
            if force_at is not None and forced_sent is None and (i + 1) * 0.1 >= force_at:
                force = {"type": "ForceEndpoint"} if route == "v3" else {"request": "finalize"}
                await ws.send(json.dumps(force))
                forced_sent = time.monotonic()
            await asyncio.sleep(max(0.0, began + (i + 1) * 0.1 - time.monotonic()))
        stop = {"type": "Terminate"} if route == "v3" else {"request": "stop"}
        stopping = True
        await ws.send(json.dumps(stop))
        await asyncio.wait_for(receiver, 60)


async def run_once(
    url: str, route: str, streams: int, audio: bytes, force_at: float | None
) -> Delays:
    delays = Delays()
    await asyncio.gather(*(one_stream(url, route, audio, force_at, delays) for _ in range(streams)))
    return delays


def _figures(delays: list[float]) -> str:
    if not delays:
        return f"{0:>4}{'-':>9}{'-':>9}"
    p95 = statistics.quantiles(delays, n=20, method="inclusive")[-1] if len(delays) > 1 else 0
    return f"{len(delays):>4}{statistics.median(delays):>9.3f}{p95 or delays[0]:>9.3f}"


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
    table: dict[tuple[str, int], Delays] = {}
    with spawn_server(env={"STREAMER_INFERENCE__MODEL": args.model}) as server:
        url = f"ws://{server.host}:{server.port}"
        for streams in args.streams:
            for run in range(args.runs):
                plan = [(r, f) for f in (None, args.force_at) for r in ROUTES]
                for route, force_at in plan if run % 2 == 0 else plan[::-1]:
                    got = asyncio.run(run_once(url, route, streams, audio, force_at))
                    delays = table.setdefault((route, streams), Delays())
                    delays.ends.extend(got.ends)
                    delays.forced.extend(got.forced)
    print(
        f"seconds (model {args.model}, {args.runs} runs, jfk.wav 11 s, force at {args.force_at} s)"
    )
    print(f"{'route':<22}{'streams':>8}  {'end of turn: n, p50, p95':<24}  forced: n, p50, p95")
    for (route, streams), delays in table.items():
        print(
            f"{ROUTES[route]:<22}{streams:>8}  {_figures(delays.ends):<24}  "
            f"{_figures(delays.forced)}"
        )


if __name__ == "__main__":
    main()
