"""Time to final segment (TTFS) on ``/v1/listen``, measured as Pipecat's stt-benchmark does.

Each stream is one voice agent's socket, kept for many turns: real speech (the speech
fixtures one after another, a second of silence between them, each stream starting at a
different one, played ``--rounds`` times) sent at real time in 20 ms chunks of 16 kHz
linear16. On the client side a Silero VAD with Pipecat's defaults (confidence 0.7,
start_secs 0.2, stop_secs 0.2; ``VADAnalyzer``'s state machine over 512-sample frames)
decides when the user stopped speaking, and at that moment the client sends Deepgram's
``Finalize``, as Pipecat's ``DeepgramSTTService`` does. TTFS is the arrival of the first
non-empty ``from_finalize`` final minus the end of speech (the VAD's stop minus its 0.2 s).
P50/P95/P99 by linear interpolation over every turn of every stream; the word error rate
of all the finals against what is said (tests/transcripts.py).

    python benchmarks/bench_ttfs.py [--streams 1 8 32] [--rounds 2] [--json out.json]
        [--env INFERENCE__MAX_BATCH=1 ...] [--url ws://host:port] [--pipecat]

It spawns ``streamer serve --model whisper`` (``--env`` adds settings) unless ``--url``
names a running server. ``--pipecat`` also plays one stream's audio through Pipecat's own
``SileroVADAnalyzer`` and ``DeepgramSTTService`` (the client venv ``.venv-clients/pipecat``,
``benchmarks/pipecat_ttfs.py``) and reports the TTFS that Pipecat's frames show, to check
that this client measures what Pipecat sees.

The client's VAD runs ahead of time on the audio (the same decisions, since the audio is
known), so the clients spend no CPU on it while the server is measured. Pipecat's VAD
also requires a smoothed loudness of 0.6 (``min_volume``); the recordings here are clean
speech at a normal level, so the confidence alone decides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from streamer.bench.expected import decode_channels
from streamer.cli.client import load_audio
from streamer.segmentation.vad import (
    FRAME_SAMPLES,
    SileroVad,
)
from streamer.spawn import spawn_server

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
sys.path.insert(0, str(ROOT / "tests"))
from transcripts import SAID, edits, words  # noqa: E402  (the references live beside the fixtures)

sys.path.insert(0, str(ROOT / "benchmarks"))
from ttfs_turns import speech_probabilities  # noqa: E402  (beside this file)

FILES = ["jfk.wav", "harvard_16k.wav", "cross_8k.wav", "big_dog_8k.wav", "front_center_48k.wav"]
RATE = 16000
CHUNK = RATE // 50
"""Samples in one 20 ms chunk."""
GAP_SECONDS = 1.0
CONFIDENCE = 0.7
START_SECS = 0.2
STOP_SECS = 0.2
QUERY = "encoding=linear16&sample_rate=16000&channels=1&interim_results=true&punctuate=true"
"""What Pipecat's ``DeepgramSTTService`` asks for by default (model and language aside)."""
PIPECAT_PYTHON = ROOT / ".venv-clients" / "pipecat" / "bin" / "python"

QUIET, STARTING, SPEAKING, STOPPING = "quiet", "starting", "speaking", "stopping"
STEP: dict[tuple[str, bool], tuple[str, bool]] = {
    # (state, frame is speech) -> (next state, whether the frame count goes on; else 1 or 0)
    (QUIET, True): (STARTING, False),
    (QUIET, False): (QUIET, False),
    (STARTING, True): (STARTING, True),
    (STARTING, False): (QUIET, False),
    (SPEAKING, True): (SPEAKING, False),
    (SPEAKING, False): (STOPPING, False),
    (STOPPING, True): (SPEAKING, False),
    (STOPPING, False): (STOPPING, True),
}
"""Pipecat's ``VADAnalyzer`` per frame; a count reaching start (stop) frames then moves
STARTING to SPEAKING (STOPPING to QUIET: the user stopped speaking)."""


def vad_stops(audio: np.ndarray, vad: SileroVad) -> list[int]:
    """The sample counts at which Pipecat's VAD would say the user stopped speaking."""
    frames_per_second = RATE / FRAME_SAMPLES
    start_frames = round(START_SECS * frames_per_second)
    stop_frames = round(STOP_SECS * frames_per_second)
    vad_state, count, stops = QUIET, 0, []
    for k, probability in enumerate(speech_probabilities(audio, vad)):
        end = (k + 1) * FRAME_SAMPLES
        speaking = bool(probability >= CONFIDENCE)
        vad_state, goes_on = STEP[(vad_state, speaking)]
        count = count + 1 if goes_on else int(vad_state in (STARTING, STOPPING))
        if vad_state == STARTING and count >= start_frames:
            vad_state, count = SPEAKING, 0
        elif vad_state == STOPPING and count >= stop_frames:
            vad_state, count = QUIET, 0
            stops.append(end)
    return stops


def medley(first: int, rounds: int) -> tuple[np.ndarray, str]:
    """The fixtures from the ``first``, a gap after each, ``rounds`` times; what is said."""
    order = [(first + k) % len(FILES) for k in range(len(FILES))] * rounds
    gap = np.zeros(round(GAP_SECONDS * RATE), dtype=np.float32)
    parts = []
    for k in order:
        loaded = load_audio(AUDIO / FILES[k])
        parts += [decode_channels(loaded.data, dict(loaded.format), RATE)[0], gap]
    return np.concatenate(parts), " ".join(SAID[FILES[k]] for k in order)


def pcm16(audio: np.ndarray) -> bytes:
    return bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


@dataclass
class StreamResult:
    """What one socket saw."""

    ttfs: list[float] = field(default_factory=list)
    finalizes: int = 0
    empty_answers: int = 0
    """``from_finalize`` finals without words (nothing was open, or nothing was said)."""
    finals: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reference: str = ""


async def one_stream(url: str, audio: np.ndarray, stops: list[int], delay: float) -> StreamResult:
    """Play ``audio`` at real time on one socket, ``Finalize`` at each VAD stop."""
    result = StreamResult()
    pending: list[float] = []  # speech ends of the Finalizes not answered yet, in order
    data = pcm16(audio)
    # Finalize goes after the chunk that completes the stop's frame.
    finalize_after = {-(-stop // CHUNK) - 1 for stop in stops}
    await asyncio.sleep(delay)
    async with websockets.connect(url, max_size=None) as ws:

        async def read() -> None:
            async for raw in ws:
                now = time.monotonic()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "Error":
                    result.errors.append(str(message.get("description")))
                if kind != "Results" or not message.get("is_final"):
                    continue
                text = str(message["channel"]["alternatives"][0]["transcript"])
                if text:
                    result.finals.append(text)
                if message.get("from_finalize") and pending:
                    speech_end = pending.pop(0)
                    if text:
                        result.ttfs.append(now - speech_end)
                    else:
                        result.empty_answers += 1

        reader = asyncio.create_task(read())
        start = time.monotonic()
        for i, at in enumerate(range(0, len(data), 2 * CHUNK)):
            wait = start + i * CHUNK / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await ws.send(data[at : at + 2 * CHUNK])
            if i in finalize_after:
                pending.append(time.monotonic() - STOP_SECS)
                result.finalizes += 1
                await ws.send(json.dumps({"type": "Finalize"}))
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, 60)
    return result


def percentiles(values: list[float]) -> dict[str, float | None]:
    """P50/P95/P99 (linear interpolation) and the worst, in milliseconds."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99], method="linear")
    return {
        "p50": round(float(p50)),
        "p95": round(float(p95)),
        "p99": round(float(p99)),
        "max": round(float(ms.max())),
    }


async def run(url: str, streams: int, rounds: int, vad: SileroVad) -> dict[str, Any]:
    """``streams`` concurrent sockets; every turn's TTFS, the finals' WER."""
    plays = []
    for n in range(streams):
        audio, said = medley(n % len(FILES), rounds)
        plays.append((audio, said, vad_stops(audio, vad)))
    # Starts spread over a second, as agents' calls do not begin on the same frame.
    results = await asyncio.gather(
        *(
            one_stream(url, audio, stops, delay=n / max(1, streams))
            for n, (audio, _, stops) in enumerate(plays)
        )
    )
    total_edits = total_words = 0
    for result, (_, said, _) in zip(results, plays, strict=True):
        reference = words(said)
        total_edits += edits(reference, words(" ".join(result.finals)))
        total_words += len(reference)
    ttfs = [t for r in results for t in r.ttfs]
    return {
        "streams": streams,
        "turns": sum(r.finalizes for r in results),
        "answered": len(ttfs),
        "empty_answers": sum(r.empty_answers for r in results),
        "ttfs_ms": percentiles(ttfs),
        "wer": round(total_edits / max(1, total_words), 4),
        "errors": [e for r in results for e in r.errors],
    }


def pipecat_check(base_url: str, rounds: int) -> dict[str, Any]:
    """One stream through Pipecat's own VAD and ``DeepgramSTTService``: its TTFS."""
    audio, _ = medley(0, rounds)
    with tempfile.TemporaryDirectory(prefix="bench-ttfs-") as folder:
        raw = Path(folder) / "speech.raw"
        raw.write_bytes(pcm16(audio))
        done = subprocess.run(
            [
                str(PIPECAT_PYTHON),
                str(ROOT / "benchmarks" / "pipecat_ttfs.py"),
                "--url",
                base_url,
                "--audio",
                str(raw),
            ],
            capture_output=True,
            text=True,
            timeout=120 + len(audio) / RATE,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the Pipecat client failed:\n{done.stderr[-3000:]}")
    seen = json.loads(done.stdout)
    return {
        "stops": seen["stops"],
        "answered": len(seen["ttfs"]),
        "empty_answers": seen["empty"],
        "ttfs_ms": percentiles(seen["ttfs"]),
    }


@contextmanager
def server_for(args: argparse.Namespace) -> Iterator[str]:
    """The base URL of the server to measure: ``--url``, else a spawned one."""
    if args.url:
        yield args.url.rstrip("/")
        return
    env = {"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_LOG_LEVEL": "warning"}
    for pair in args.env:
        key, _, value = pair.partition("=")
        env[key if key.startswith("STREAMER_") else f"STREAMER_{key}"] = value
    with spawn_server(env=env) as server:
        yield f"ws://{server.host}:{server.port}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="times each stream's audio plays")
    parser.add_argument("--env", nargs="*", default=[], help="server settings, KEY=VALUE")
    parser.add_argument("--url", help="a running server's base URL, ws://host:port")
    parser.add_argument("--pipecat", action="store_true", help="also measure through Pipecat")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    vad = SileroVad()
    report: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}, "runs": []}
    with server_for(args) as base:
        url = f"{base}/v1/listen?{QUERY}"
        for streams in args.streams:
            figures = await run(url, streams, args.rounds, vad)
            report["runs"].append(figures)
            t = figures["ttfs_ms"]
            print(
                f"{streams:3d} streams: TTFS p50 {t['p50']} p95 {t['p95']} p99 {t['p99']} "
                f"max {t['max']} ms; {figures['answered']} of {figures['turns']} turns "
                f"answered ({figures['empty_answers']} empty); WER {figures['wer']:.3f}; "
                f"{len(figures['errors'])} errors {figures['errors'][:2]}",
                flush=True,
            )
        if args.pipecat:
            seen = await asyncio.to_thread(pipecat_check, base, args.rounds)
            report["pipecat"] = seen
            t = seen["ttfs_ms"]
            print(
                f"through Pipecat: TTFS p50 {t['p50']} p95 {t['p95']} p99 {t['p99']} "
                f"max {t['max']} ms; {seen['answered']} of {seen['stops']} stops answered "
                f"({seen['empty_answers']} empty)",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
