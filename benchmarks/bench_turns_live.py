"""End of turn on a live server: ``/v2/listen`` (Deepgram Flux) against the segmented
route's 500 ms silence endpoint, at 1 and N concurrent streams, over real sockets.

The labelled cases are ``bench_turns.py``'s (complete sentences, and sentences cut at a
word boundary mid-phrase), a subset of ``--cases`` of them spread evenly over the set,
every complete sentence among them. Each stream sends one case at real time in
``--chunk-ms`` messages, as a live source does (a message leaves once its audio is whole):

- complete: the speech, then silence at the recording's own noise floor until the turn
  ends (at most ``eot_timeout_ms`` and a second more);
- cut-off: the speech up to the cut, a pause of ``--pause-ms`` of the same silence, then
  the rest of the sentence from its first sound (the recording's own silence after the cut
  left out), then the end of the stream.

The same cases go through both routes in the same run: ``/v2/listen`` (``EndOfTurn``) and
``/api/v1/segmented`` (its final segment: the segmenter ends a segment after 500 ms of
silence, which is the silence endpoint). Latency is from the moment the last sample of
speech would have been spoken (the stream's audio clock) to the arrival of the
``EndOfTurn`` (or final segment) that ends there. A cut-off is falsely ended when an
``EndOfTurn`` not asked for by the client (trigger ``model`` or ``timeout``), or a final
segment, ends at the cut. With N streams, the N cases start together (cases are reused
when N is larger than the subset). Each phase also reads the server's CPU (its process
tree, from ``/proc``) and the turn engine's (``streamer_turn_engine_cpu_seconds_total``).

    python benchmarks/bench_turns_live.py [--streams 1 50] [--model whisper]
        [--model-many test] [--cases 50] [--pause-ms 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

# The labelled cases of the offline benchmark, from the script beside this one.
from bench_turns import RATE, WORDS, Audio, Case, cases, frame_rms, load, speech_end

from streamer.bench.runner import TURN_CPU, CpuMeter, server_metric
from streamer.spawn import spawn_server

SEGMENT_PAD = 0.2
"""Seconds of silence the segmenter keeps at a segment's end (its ``end_time`` is later
than the speech by up to this)."""
AFTER_PAUSE = 0.15
"""How far past a cut-off's pause (seconds) an end's audio time may lie and still be the
pause's: the VAD places a speech end up to about 0.3 s after the fade the cut is at."""


@dataclass
class Live:
    """One case as a live stream sends it."""

    case: Case
    rest: Audio  # what follows the pause of a cut-off (to its sentence's end)
    noise: float
    after: float
    """An end whose audio time is past this is the cut's: halfway from the word before the
    cut to the cut's own word (the VAD's speech end can lie before the energy's fade)."""


@dataclass
class Outcome:
    """What one stream of one case saw."""

    name: str
    complete: bool
    latency: float | None = None  # seconds from the end of speech to the end that closes it
    cut_off: bool = False
    trigger: str | None = None
    failure: str | None = None
    ends: list[dict[str, Any]] = field(default_factory=list)


def subset(count: int, digital: bool = False) -> list[Live]:
    """``count`` cases spread evenly over the set, every complete sentence among them."""
    labelled = cases(digital)
    complete = [c for c in labelled if c.complete]
    cut = [c for c in labelled if not c.complete]
    wanted = max(0, count - len(complete))
    chosen = [cut[i * len(cut) // wanted] for i in range(wanted)] if wanted < len(cut) else cut
    rests: dict[str, Audio] = {}
    out: list[Live] = []
    for case in [*complete, *chosen]:
        name, _, where = case.name.partition(":")
        sentence, word = (int(x) - 1 for x in where.split("."))
        rest = np.zeros(0, dtype=np.float32)
        if not case.complete:
            key = f"{name}:{sentence}"
            if key not in rests:
                audio = load(f"{name}.wav")
                rms = frame_rms(audio)
                floor = float(np.percentile(rms, 2))
                end = speech_end(rms, WORDS[f"{name}.wav"][sentence][-1], floor)
                rests[key] = audio[:end]
            rest = onset(rests[key][len(case.speech) :])
        sentences = WORDS[f"{name}.wav"]
        words = sentences[sentence]
        before = (
            words[word - 1]
            if word
            else (sentences[sentence - 1][-1] if sentence else max(0.0, words[0] - 0.5))
        )
        out.append(Live(case, rest, case.noise_rms, (before + words[word]) / 2))
    return out


def onset(rest: Audio) -> Audio:
    """``rest`` from 20 ms before its first sound: the recording's own silence after a cut
    (jfk pauses for a second at its commas) would make the pause longer than asked."""
    rms = frame_rms(rest)
    if not len(rms):
        return rest
    loud = np.flatnonzero(rms > max(float(rms.max()) / 100, 4 * float(np.percentile(rms, 2))))
    start = max(0, int(loud[0]) - 2) * 160 if len(loud) else 0
    return rest[start:]


def pcm(audio: Audio) -> bytes:
    return np.asarray(np.clip(audio, -1.0, 1.0) * 32767, dtype="<i2").tobytes()


def silence(live: Live, seconds: float, offset: float) -> Audio:
    seed = zlib.crc32(f"{live.case.name}:{offset:.3f}".encode())
    noise = np.random.default_rng(seed).normal(0, live.noise, int(seconds * RATE))
    return noise.astype(np.float32)


async def one_stream(
    base: str, route: str, live: Live, pause: float, chunk: float, eot_timeout: float
) -> Outcome:
    """Stream one case on ``route`` (``flux`` or ``segmented``) and judge its end."""
    case = live.case
    outcome = Outcome(case.name, case.complete)
    cut = len(case.speech) / RATE
    if case.complete:
        tail = silence(live, eot_timeout + 1.0, cut)
        audio = np.concatenate((case.speech, tail))
    else:
        audio = np.concatenate((case.speech, silence(live, pause, cut), live.rest))
    data = pcm(audio)
    step = round(chunk * RATE) * 2
    if route == "flux":
        url = f"{base}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate={RATE}"
    else:
        url = f"{base}/api/v1/segmented"
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    began = 0.0  # the audio clock's zero on the loop's clock

    stopped: list[float] = []

    def judge(end_time: float, trigger: str | None, arrived: float) -> None:
        """An end (EndOfTurn or final segment) ending at ``end_time`` of the audio."""
        if trigger == "segment" and stopped:
            trigger = "manual"  # the segmenter's flush at the end of the stream
        outcome.ends.append({"end": end_time, "trigger": trigger, "at": arrived - began})
        pad = SEGMENT_PAD if trigger == "segment" else 0.0
        last = float("inf") if case.complete else cut + pause + AFTER_PAUSE + pad
        if not live.after < end_time <= last or trigger == "manual":
            return
        if case.complete and outcome.latency is None:
            outcome.latency = arrived - (began + cut)
            outcome.trigger = trigger
            done.set()
        elif not case.complete:
            outcome.cut_off = True
            outcome.trigger = trigger

    try:
        async with websockets.connect(url, max_queue=None, ping_interval=None) as ws:
            if route == "segmented":
                fmt = {"channels": 1, "sample_rate": RATE, "bit_depth": 16}
                await ws.send(json.dumps({"request": "start", "format": fmt}))

            async def receive() -> None:
                async for message in ws:
                    body = json.loads(message)
                    now = loop.time()
                    kind = body.get("type")
                    if kind == "TurnInfo" and body["event"] == "EndOfTurn":
                        judge(body["audio_window_end"], body.get("trigger"), now)
                    elif kind == "segment" and body.get("is_final"):
                        judge(body["end_time"], "segment", now)
                    elif kind in ("Error", "error"):
                        outcome.failure = json.dumps(body)[:200]
                    elif kind == "done":
                        return

            receiver = asyncio.create_task(receive())
            began = loop.time()
            for k, offset in enumerate(range(0, len(data), step)):
                # A live source sends a message once its audio is whole.
                due = began + (k + 1) * chunk
                await asyncio.sleep(max(0.0, due - loop.time()))
                if done.is_set() or receiver.done():
                    break
                await ws.send(data[offset : offset + step])
            stop = {"type": "CloseStream"} if route == "flux" else {"request": "stop"}
            if not receiver.done():
                stopped.append(loop.time())
                await ws.send(json.dumps(stop))
            await asyncio.wait_for(receiver, 60)
    except Exception as error:  # one stream's failure is a result, not the run's end
        outcome.failure = f"{type(error).__name__}: {error}"
    return outcome


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    complete = [o for o in outcomes if o.complete]
    cut = [o for o in outcomes if not o.complete]
    latencies = [o.latency for o in complete if o.latency is not None]
    return {
        "complete": len(complete),
        "complete_ended": len(latencies),
        "by_trigger": {
            t: sum(o.trigger == t for o in complete if o.latency is not None)
            for t in sorted({str(o.trigger) for o in complete if o.latency is not None})
        },
        "p50_ms": round(1000 * statistics.median(latencies)) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95)) if latencies else None,
        "cut": len(cut),
        "false_cutoffs": sum(o.cut_off for o in cut),
        "false_cutoff_rate": round(sum(o.cut_off for o in cut) / len(cut), 3) if cut else None,
        "failures": [f"{o.name}: {o.failure}" for o in outcomes if o.failure][:10],
    }


async def phase(
    base: str, http: str, pid: int, route: str, lives: list[Live], streams: int, args: Any
) -> dict[str, Any]:
    """``streams`` at once (1: one after another) of the cases, on one route."""
    meter = CpuMeter(pid)
    cpu_0, turn_0 = meter.seconds(), server_metric(http, TURN_CPU)
    began = time.monotonic()
    pause, chunk, timeout = args.pause_ms / 1000, args.chunk_ms / 1000, args.eot_timeout_ms / 1000

    def run(live: Live) -> Any:
        return one_stream(base, route, live, pause, chunk, timeout)

    outcomes: list[Outcome] = []
    if streams == 1:
        for live in lives:
            outcomes.append(await run(live))
    else:
        chosen = [lives[i % len(lives)] for i in range(streams)]
        outcomes = list(await asyncio.gather(*(run(live) for live in chosen)))
    # The engine may still be scoring pauses of streams that have ended (a backlog at
    # many streams): that CPU is this phase's, not the next one's.
    turn_1 = server_metric(http, TURN_CPU)
    while turn_1 is not None:
        await asyncio.sleep(1.0)
        turn_1, settled = server_metric(http, TURN_CPU), turn_1
        if turn_1 == settled:
            break
    wall = time.monotonic() - began
    cpu_1 = meter.seconds()
    figures = summary(outcomes)
    figures["route"] = route
    figures["streams"] = streams
    figures["wall_seconds"] = round(wall, 1)
    if cpu_0 is not None and cpu_1 is not None:
        figures["server_cpu_seconds"] = round(cpu_1 - cpu_0, 2)
        figures["server_cores_mean"] = round((cpu_1 - cpu_0) / wall, 3)
        if turn_0 is not None and turn_1 is not None and cpu_1 > cpu_0:
            figures["turn_engine_cpu_seconds"] = round(turn_1 - turn_0, 3)
            figures["turn_engine_share"] = round((turn_1 - turn_0) / (cpu_1 - cpu_0), 4)
    figures["outcomes"] = [
        {
            "case": o.name,
            "latency": o.latency,
            "cut_off": o.cut_off,
            "trigger": o.trigger,
            "ends": o.ends,
        }
        for o in outcomes
    ]
    return figures


def line(figures: dict[str, Any]) -> str:
    name = "/v2/listen EndOfTurn" if figures["route"] == "flux" else "segmented, 500 ms"
    share = figures.get("turn_engine_share")
    return (
        f"{name:<22}{figures['streams']:>8}"
        f"{figures['false_cutoffs']:>5}/{figures['cut']:<4}"
        f"{(figures['false_cutoff_rate'] or 0):>6.0%}"
        f"{figures['p50_ms']!s:>8}{figures['p95_ms']!s:>8}"
        f"{figures['complete_ended']:>5}/{figures['complete']:<3}"
        f"{figures.get('server_cores_mean', '-'):>8}"
        f"{'-' if share is None else f'{share:.1%}':>8}"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    lives = subset(args.cases)
    print(
        f"{sum(lv.case.complete for lv in lives)} complete sentences, "
        f"{sum(not lv.case.complete for lv in lives)} mid-phrase cuts "
        f"(pause {args.pause_ms} ms), {args.chunk_ms:.0f} ms messages at real time"
    )
    report: dict[str, Any] = {"pause_ms": args.pause_ms, "chunk_ms": args.chunk_ms, "runs": []}
    print(
        f"{'route':<22}{'streams':>8}{'false cut-offs':>15}{'p50':>8}{'p95':>8}"
        f"{'ended':>9}{'cores':>8}{'turns':>8}"
    )
    for streams in args.streams:
        model = args.model if streams == 1 else args.model_many
        env = {"STREAMER_INFERENCE__MODEL": model}
        env.update(dict(pair.split("=", 1) for pair in args.server_env))
        with spawn_server(env=env) as server:
            base = f"ws://{server.host}:{server.port}"
            print(f"-- {streams} stream(s), model {model}, server pid {server.pid}")
            for route in ("flux", "segmented"):
                figures = await phase(base, server.http, server.pid, route, lives, streams, args)
                figures["model"] = model
                print(line(figures))
                for failure in figures["failures"]:
                    print(f"   failure: {failure}")
                report["runs"].append(figures)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--model", default="whisper", help="the recognizer at 1 stream")
    parser.add_argument("--model-many", default="test", help="the recognizer at more than 1 stream")
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--pause-ms", type=int, default=300)
    parser.add_argument("--chunk-ms", type=float, default=50.0)
    parser.add_argument("--eot-timeout-ms", type=int, default=5000)
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
