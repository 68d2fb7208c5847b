"""LiveKit's ``deepgram.STTv2`` (``livekit-plugins-deepgram``, Deepgram Flux), base URL
changed, with an early end of turn (``eager_eot_threshold``) and Flux's other thresholds,
streaming a real file in real time, then silence. Prints the speech events it produced as
JSON.

    python livekit_flux.py --url ws://host:port/v2/listen --audio speech.raw --rate 16000
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
from livekit.plugins import deepgram


async def run(args: argparse.Namespace) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        stt = deepgram.STTv2(
            api_key=args.key,
            base_url=args.url,
            http_session=session,
            sample_rate=args.rate,
            eager_eot_threshold=args.eager,
            eot_threshold=args.eot,
            eot_timeout_ms=args.timeout_ms,
        )
        stream = stt.stream()

        async def push() -> None:
            audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
            step = args.rate // 50 * 2  # 20 ms of 16-bit mono
            chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
            chunks += [bytes(step)] * int(args.tail / 0.02)
            for chunk in chunks:
                stream.push_frame(rtc.AudioFrame(chunk, args.rate, 1, len(chunk) // 2))
                await asyncio.sleep(0.02)
            stream.end_input()

        pusher = asyncio.create_task(push())
        async for event in stream:
            body: dict[str, Any] = {"type": event.type.value}
            if event.alternatives:
                alt = event.alternatives[0]
                body["text"] = alt.text
                body["words"] = [str(w) for w in (alt.words or [])]
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
    parser.add_argument("--eager", type=float, default=0.3)
    parser.add_argument("--eot", type=float, default=0.9)
    parser.add_argument("--timeout-ms", type=int, default=5000)
    parser.add_argument("--tail", type=float, default=3.0)
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
