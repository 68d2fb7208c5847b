"""LiveKit's ``assemblyai.STT`` (``livekit-plugins-assemblyai``) with its defaults,
``base_url`` changed, streaming a real file in real time. Prints the speech events it
produced as JSON.

    python livekit_assemblyai.py --url ws://host:port --audio speech.raw --rate 16000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
from livekit import rtc
from livekit.plugins import assemblyai


async def run(args: argparse.Namespace) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        stt = assemblyai.STT(api_key=args.key, base_url=args.url, http_session=session)
        stream = stt.stream()

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
                body["start"] = alt.start_time
                body["end"] = alt.end_time
                body["words"] = [
                    {"word": str(w), "start": w.start_time, "end": w.end_time}
                    for w in (alt.words or [])
                ]
            events.append(body)
        await pusher
        await stream.aclose()
    return {"events": events}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="no-key")
    parser.add_argument("--audio", required=True, help="raw 16-bit mono PCM")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--tail", type=float, default=1.5)
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
