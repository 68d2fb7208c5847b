"""What the LiveKit STT scripts share: their arguments, and streaming a real file in real
time (20 ms frames, then ``--tail`` seconds of silence) into an STT's stream while
collecting the speech events it produces.

A module of this directory: each script imports it from beside itself (a script's own
directory is first on its path), inside the clients' virtual environment.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import stt as agents_stt


def arguments(tail: float) -> argparse.ArgumentParser:
    """The arguments every script takes; ``tail``: the default seconds of silence sent
    after the file."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="no-key")
    parser.add_argument("--audio", required=True, help="raw 16-bit mono PCM")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--tail", type=float, default=tail)
    return parser


async def transcribe(
    args: argparse.Namespace,
    make_stt: Callable[[aiohttp.ClientSession], agents_stt.STT],
    *,
    timed: bool = True,
) -> dict[str, Any]:
    """The events of the STT ``make_stt`` builds, as JSON: type, and the first
    alternative's text and words (with their times and the alternative's where ``timed``)."""
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        stream = make_stt(session).stream()

        async def push() -> None:
            audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
            step = args.rate // 50 * 2  # 20 ms of 16-bit mono
            chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
            chunks += [bytes(step)] * int(args.tail / 0.02)
            for chunk in chunks:
                samples = len(chunk) // 2
                stream.push_frame(rtc.AudioFrame(chunk, args.rate, 1, samples))
                await asyncio.sleep(0.02)
            stream.end_input()

        pusher = asyncio.create_task(push())
        async for event in stream:
            body: dict[str, Any] = {"type": event.type.value}
            if event.alternatives:
                alt = event.alternatives[0]
                body["text"] = alt.text
                if timed:
                    body["start"] = alt.start_time
                    body["end"] = alt.end_time
                    body["words"] = [
                        {"word": str(w), "start": w.start_time, "end": w.end_time}
                        for w in (alt.words or [])
                    ]
                else:
                    body["words"] = [str(w) for w in (alt.words or [])]
            events.append(body)
        await pusher
        await stream.aclose()
    return {"events": events}
