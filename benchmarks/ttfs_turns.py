"""A simple TTFS: the time from the end of a user's speech to its final transcript.

Measured as voice-agent frameworks see it through Deepgram's live API (``/v1/listen``):
each stream keeps one socket and plays turns of real speech at real time in 20 ms chunks of
16 kHz PCM; a client-side VAD (Silero, confidence 0.7) finds where each turn's speech ends,
and 0.2 s after it (the ``stop_secs`` of a voice agent's VAD) the client sends ``Finalize``.
TTFS is the arrival of the turn's first non-empty ``from_finalize`` final minus the moment
its speech end was sent. A turn with no such final within ``TURN_TIMEOUT`` is unanswered.

The VAD runs ahead of time over each turn's audio (the same model the server uses), so the
client spends nothing on it while streaming.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from websockets.asyncio.client import connect

from streamer.segmentation.vad import CONTEXT_SAMPLES, FRAME_SAMPLES, STATE_SHAPE, SileroVad

RATE = 16000
CHUNK = RATE // 50  # 20 ms
STOP_SECONDS = 0.2
CONFIDENCE = 0.7
TURN_TIMEOUT = 10.0


@dataclass(frozen=True)
class Turn:
    """One turn: its audio (speech, then silence) and where its speech ends."""

    name: str
    audio: NDArray[np.float32]
    speech_end: float
    """Seconds into ``audio``."""


def speech_probabilities(audio: NDArray[np.float32], vad: SileroVad) -> Iterator[np.float32]:
    """The VAD's speech probability of each whole frame of ``audio``, in order (float32, as
    the model gives it, so a threshold compares as it would on the model's output)."""
    state = np.zeros((STATE_SHAPE[0], 1, STATE_SHAPE[1]), dtype=np.float32)
    context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)
    for k in range(len(audio) // FRAME_SAMPLES):
        frame = audio[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].reshape(1, -1)
        probs, state, context = vad.run(frame, state, context)
        yield probs[0]


def speech_end(audio: NDArray[np.float32], vad: SileroVad) -> float:
    """Where the last frame the VAD holds for speech ends, in seconds."""
    last = 0
    for k, probability in enumerate(speech_probabilities(audio, vad)):
        if probability >= CONFIDENCE:
            last = k + 1
    return last * FRAME_SAMPLES / RATE


def make_turns(speech: dict[str, NDArray[np.float32]], gap: float = 1.0) -> list[Turn]:
    """Each recording as a turn followed by ``gap`` seconds of silence."""
    vad = SileroVad()
    silence = np.zeros(round(gap * RATE), dtype=np.float32)
    return [
        Turn(name, np.concatenate([audio, silence]), speech_end(audio, vad))
        for name, audio in speech.items()
    ]


@dataclass
class StreamTtfs:
    ttfs: list[float] = field(default_factory=list)
    unanswered: int = 0
    transcripts: list[str] = field(default_factory=list)
    """The text of each turn's finals, in order."""
    problem: str | None = None


async def one_stream(url: str, turns: list[Turn], start_delay: float) -> StreamTtfs:
    """Play every turn on one socket; the TTFS of each."""
    await asyncio.sleep(start_delay)
    out = StreamTtfs()
    pcm = [(np.clip(t.audio, -1, 1) * 32767).astype("<i2").tobytes() for t in turns]
    try:
        async with connect(url, max_size=None, open_timeout=30) as ws:
            finals: list[tuple[float, dict[str, Any]]] = []
            got = asyncio.Event()

            async def receive() -> None:
                async for message in ws:
                    if isinstance(message, bytes):
                        continue
                    event = json.loads(message)
                    if event.get("type") == "Results" and event.get("is_final"):
                        finals.append((time.monotonic(), event))
                        got.set()

            reader = asyncio.create_task(receive())
            try:
                for turn, data in zip(turns, pcm, strict=True):
                    await _play_turn(ws, turn, data, finals, got, out)
                await ws.send(json.dumps({"type": "CloseStream"}))
                async with asyncio.timeout(TURN_TIMEOUT):
                    await reader
            finally:
                reader.cancel()
    except Exception as error:  # a stream that fails is reported, not raised
        out.problem = f"{type(error).__name__}: {error}"
    return out


async def _play_turn(
    ws: Any,
    turn: Turn,
    data: bytes,
    finals: list[tuple[float, dict[str, Any]]],
    got: asyncio.Event,
    out: StreamTtfs,
) -> None:
    chunks = [data[i : i + 2 * CHUNK] for i in range(0, len(data), 2 * CHUNK)]
    finalize_at = turn.speech_end + STOP_SECONDS
    begin = time.monotonic()
    seen = len(finals)
    ended_sent: float | None = None
    finalized = False
    for k, chunk in enumerate(chunks):
        due = begin + k * CHUNK / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(chunk)
        sent_until = (k + 1) * CHUNK / RATE
        if ended_sent is None and sent_until >= turn.speech_end:
            ended_sent = time.monotonic()
        if not finalized and sent_until >= finalize_at:
            await ws.send(json.dumps({"type": "Finalize"}))
            finalized = True
    if not finalized:
        await ws.send(json.dumps({"type": "Finalize"}))
    assert ended_sent is not None
    # The turn's finals: those after the turn began, up to its non-empty from_finalize one.
    deadline = ended_sent + TURN_TIMEOUT
    answer: float | None = None
    while answer is None and time.monotonic() < deadline:
        for arrived, event in finals[seen:]:
            text = _transcript(event)
            if event.get("from_finalize") and text and arrived >= ended_sent:
                answer = arrived
                break
        if answer is None:
            got.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await got.wait()
            except TimeoutError:
                break
    texts = [_transcript(event) for _, event in finals[seen:]]
    out.transcripts.append(" ".join(t for t in texts if t))
    if answer is None:
        out.unanswered += 1
    else:
        out.ttfs.append(answer - ended_sent)


def _transcript(event: dict[str, Any]) -> str:
    alternatives = (event.get("channel") or {}).get("alternatives") or [{}]
    return str(alternatives[0].get("transcript") or "").strip()


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    return float(np.percentile(values, q)) if values else None


async def run_ttfs(base_url: str, turns: list[Turn], streams: int, ramp: float) -> dict[str, Any]:
    """``streams`` concurrent sockets, each playing all turns (starting at a different one)."""
    url = f"{base_url}/v1/listen?encoding=linear16&sample_rate={RATE}&channels=1"
    orders = [turns[k % len(turns) :] + turns[: k % len(turns)] for k in range(streams)]
    results = await asyncio.gather(
        *(one_stream(url, order, ramp * k / max(1, streams)) for k, order in enumerate(orders))
    )
    values = [v for r in results for v in r.ttfs]
    return {
        "streams": streams,
        "turns": sum(len(r.transcripts) for r in results),
        "answered": len(values),
        "unanswered": sum(r.unanswered for r in results),
        "problems": [r.problem for r in results if r.problem],
        "ttfs_ms": {
            name: None if (v := percentile(values, q)) is None else round(1000 * v)
            for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "per_stream": [
            {"turns": [t.name for t in order], "text": " ".join(r.transcripts)}
            for order, r in zip(orders, results, strict=True)
        ],
    }
