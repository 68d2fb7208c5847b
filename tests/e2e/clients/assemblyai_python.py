"""Streams raw audio to an AssemblyAI-compatible server with the official Python SDK's v3
``StreamingClient`` (``assemblyai``), unchanged but for ``api_host``, and prints what came
back as JSON.

Run with the interpreter of the SDK's own environment (see the Makefile's client venvs):

    python assemblyai_python.py --host ws://host:port --audio file.raw --params '{...}'
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dropped  # this directory's: fails the script when the SDK drops a message
from assemblyai.streaming.v3 import (
    StreamingClient,
    StreamingClientOptions,
    StreamingError,
    StreamingEvents,
    StreamingParameters,
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    received: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    began = threading.Event()
    options = StreamingClientOptions(api_host=args.host, api_key=args.key, token=args.token)
    client = StreamingClient(options)

    def record(_: Any, event: Any) -> None:
        body = event.model_dump(mode="json")
        body["received_at"] = time.monotonic()
        received.append(body)
        if body.get("type") == "Begin":
            began.set()

    def failed(_: Any, error: StreamingError) -> None:
        errors.append({"code": error.code, "message": str(error)})
        began.set()

    for kind in (
        StreamingEvents.Begin,
        StreamingEvents.Turn,
        StreamingEvents.Termination,
        StreamingEvents.SpeechStarted,
    ):
        client.on(kind, record)
    client.on(StreamingEvents.Error, failed)
    started = time.monotonic()
    client.connect(StreamingParameters(**json.loads(args.params)))
    connected = time.monotonic() - started
    began.wait(10)
    audio = Path(args.audio).read_bytes()
    step = args.chunk_bytes
    forced_at: float | None = None
    for offset in range(0, len(audio), step):
        client.stream(audio[offset : offset + step])
        if args.force_at and offset < args.force_at <= offset + step:
            client.force_endpoint()
            forced_at = time.monotonic()
        if args.pace:
            time.sleep(args.pace)
    if args.wait:
        time.sleep(args.wait)
    client.disconnect(terminate=not args.no_terminate)
    return {
        "messages": received,
        "errors": errors,
        "connect_seconds": connected,
        "forced_at": forced_at,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True, help="api_host: ws://host:port")
    parser.add_argument("--key", default=None)
    parser.add_argument("--token", default=None)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--params", default="{}", help="StreamingParameters, as JSON")
    parser.add_argument("--chunk-bytes", type=int, default=3200)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--force-at", type=int, default=0, help="byte offset of ForceEndpoint")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds before disconnecting")
    parser.add_argument("--no-terminate", action="store_true")
    args = parser.parse_args()
    dropped.watch()
    json.dump(run(args), sys.stdout)
    dropped.check()


if __name__ == "__main__":
    main()
