"""Streams raw audio to a Deepgram Flux-compatible server (``/v2/listen``) with the
official Python SDK (``deepgram-sdk``), unchanged but for its base URL, and prints what
came back as JSON.

Run with the interpreter of the SDK's own environment (see the Makefile's client venvs):

    python deepgram_flux_python.py --url ws://host:port --audio file.raw --query '{...}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import deepgram_env  # this directory's, as the one below
import dropped  # this directory's: fails the script when the SDK drops a message
from deepgram.listen.v2.types import ListenV2Configure, ListenV2ConfigureThresholds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    client = deepgram_env.client(args.url, args.key)
    query = json.loads(args.query)
    audio = Path(args.audio).read_bytes()  # noqa: ASYNC240 (once, before streaming)
    audio += bytes(int(args.silence * 32000))  # zero PCM after the speech, as Pipecat sends
    received: list[dict[str, Any]] = []
    async with client.listen.v2.connect(**query) as connection:

        async def listen() -> None:
            async for message in connection:
                if isinstance(message, bytes):
                    continue
                if hasattr(message, "model_dump"):
                    body = message.model_dump(mode="json", exclude_none=True)
                else:
                    body = dict(message)
                body["model_class"] = type(message).__name__
                received.append(body)

        listener = asyncio.create_task(listen())
        step = args.chunk_bytes
        for offset in range(0, len(audio), step):
            if args.configure_at and offset <= args.configure_at < offset + step:
                thresholds = json.loads(args.configure)
                await connection.send_configure(
                    ListenV2Configure(thresholds=ListenV2ConfigureThresholds(**thresholds))
                )
            await connection.send_media(audio[offset : offset + step])
            if args.force_end_at and offset <= args.force_end_at < offset + step:
                await connection.send_force_end_turn()
            if args.pace:
                await asyncio.sleep(args.pace)
        await connection.send_close_stream()
        await asyncio.wait_for(listener, args.timeout)
        code = connection._websocket.close_code
    return {"messages": received, "close_code": code}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="no-key")
    parser.add_argument("--audio", required=True, help="16-bit PCM")
    parser.add_argument("--query", required=True, help="connect() keyword arguments, as JSON")
    parser.add_argument("--chunk-bytes", type=int, default=2560)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--silence", type=float, default=2.0, help="seconds of zeros after")
    parser.add_argument("--configure-at", type=int, default=0, help="byte offset of a Configure")
    parser.add_argument("--configure", default="{}", help="its thresholds, as JSON")
    parser.add_argument("--force-end-at", type=int, default=0, help="byte offset of a ForceEndTurn")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    dropped.watch()
    json.dump(asyncio.run(run(args)), sys.stdout)
    dropped.check()


if __name__ == "__main__":
    main()
