"""Streams raw audio to a Deepgram-compatible server with the official Python SDK
(``deepgram-sdk``), unchanged but for its base URL, and prints what came back as JSON.

Run with the interpreter of the SDK's own environment (see the Makefile's client venvs):

    python deepgram_python.py --url ws://host:port --audio file.raw --query '{...}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import deepgram_env  # this directory's, as the two below
import dropped  # this directory's: fails the script when the SDK drops a message


async def run(args: argparse.Namespace) -> dict[str, Any]:
    client = deepgram_env.client(args.url, args.key)
    query = json.loads(args.query)
    audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
    received: list[dict[str, Any]] = []
    sent_finalize_at: list[int] = []
    async with client.listen.v1.connect(**query) as connection:

        async def listen() -> None:
            async for message in connection:
                if isinstance(message, bytes):
                    continue
                if hasattr(message, "model_dump"):
                    body = message.model_dump(mode="json")
                else:
                    body = dict(message)
                body["received_at"] = time.monotonic()
                body["after_finalize"] = len(sent_finalize_at)
                received.append(body)

        listener = asyncio.create_task(listen())
        step = args.chunk_bytes
        for offset in range(0, len(audio), step):
            await connection.send_media(audio[offset : offset + step])
            if args.finalize_at and offset < args.finalize_at <= offset + step:
                await connection.send_finalize()
                sent_finalize_at.append(offset + step)
            if args.pace:
                await asyncio.sleep(args.pace)
        if args.silence_then_keepalive:
            await asyncio.sleep(args.silence_then_keepalive)
            await connection.send_keep_alive()
        if not args.no_close:
            await connection.send_close_stream()
        await asyncio.wait_for(listener, args.timeout)
        # The SDK exposes no close code of its own; its socket has it.
        code = connection._websocket.close_code
    return {"messages": received, "close_code": code, "finalized_at": sent_finalize_at}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="no-key")
    parser.add_argument("--audio", required=True)
    parser.add_argument("--query", required=True, help="connect() keyword arguments, as JSON")
    parser.add_argument("--chunk-bytes", type=int, default=3200)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--finalize-at", type=int, default=0, help="byte offset of a Finalize")
    parser.add_argument("--silence-then-keepalive", type=float, default=0.0)
    parser.add_argument("--no-close", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    dropped.watch()
    json.dump(asyncio.run(run(args)), sys.stdout)
    dropped.check()


if __name__ == "__main__":
    main()
