"""A transcription session through the official ``openai`` SDK's realtime client.

Runs in the clients' own environment (``make clients``: the SDK wants another
``websockets`` than the server's). Reads raw audio in the session's format from a file,
sends it, and prints every server event it receives as one JSON line; ``--updates`` is a
JSON list of ``session`` objects sent first (each answered before the next is sent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import dropped  # this directory's: fails the script when the SDK drops a message
from openai import AsyncOpenAI


def show(body: dict[str, Any]) -> None:
    print(json.dumps(body), flush=True)


async def main(args: argparse.Namespace) -> None:
    client = AsyncOpenAI(
        api_key=args.api_key, base_url=f"{args.http}/v1", websocket_base_url=f"{args.ws}/v1"
    )
    audio = Path(args.audio).read_bytes() if args.audio else b""  # noqa: ASYNC240 (before any I/O)
    updates = json.loads(args.updates)
    async with client.realtime.connect(
        model="whisper", extra_query={"intent": "transcription"}
    ) as connection:
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def receive() -> None:
            async for event in connection:
                body = event.to_dict()
                show(body)
                await events.put(body)

        receiver = asyncio.create_task(receive())

        async def until(*kinds: str) -> dict[str, Any]:
            async with asyncio.timeout(60):
                while True:
                    body = await events.get()
                    if body["type"] in kinds:
                        return body

        await until("session.created")
        for session in updates:
            await connection.session.update(session=session)
            await until("session.updated", "error")
        step = args.bytes_per_second // 10  # 100 ms a message
        began = time.monotonic()
        for n, offset in enumerate(range(0, len(audio), step)):
            chunk = audio[offset : offset + step]
            await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            if args.real_time:
                await asyncio.sleep(max(0.0, began + (n + 1) / 10 - time.monotonic()))
        if args.commit:
            await connection.input_audio_buffer.commit()
        # Every committed item is transcribed (or failed) before the session ends.
        committed: set[str] = set()
        done: set[str] = set()
        quiet_until = time.monotonic() + args.settle
        while time.monotonic() < quiet_until or committed - done:
            try:
                body = await asyncio.wait_for(events.get(), 0.2)
            except TimeoutError:
                continue
            if body["type"] == "input_audio_buffer.committed":
                committed.add(body["item_id"])
            elif body["type"].startswith("conversation.item.input_audio_transcription.") and (
                not body["type"].endswith(".delta")
            ):
                done.add(body["item_id"])
        receiver.cancel()
    show({"type": "client.closed"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--ws", required=True)
    parser.add_argument("--api-key", default="unused-key")
    parser.add_argument("--audio", default="")
    parser.add_argument("--bytes-per-second", type=int, default=48_000)
    parser.add_argument("--updates", default="[]")
    parser.add_argument("--real-time", action="store_true")
    parser.add_argument("--commit", action="store_true")
    parser.add_argument("--settle", type=float, default=1.0)
    dropped.watch()
    asyncio.run(main(parser.parse_args()))
    dropped.check()
    sys.exit(0)
