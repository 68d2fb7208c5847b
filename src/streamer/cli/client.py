"""``streamer client``: stream an audio file to a server and print what comes back.

The streaming itself is the client library's (``streamer.client``); this module holds the
options, the printing and the exit statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO

from streamer.client import AudioFileError, StreamFailed, StreamResult, load_audio, stream_file

DEFAULT_ADDR = "ws://127.0.0.1:8080/api/v1/simple"


def _value(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)


def describe_event(event: dict[str, Any]) -> str:
    """One readable line for an event."""
    kind = event.get("type")
    channel = event.get("channel")
    if kind == "segment":
        skip = {"type", "channel", "start_time", "end_time", "is_final"}
        fields = " ".join(f"{k}={_value(v)}" for k, v in event.items() if k not in skip)
        state = "final" if event.get("is_final", True) else "interim"
        span = f"{event.get('start_time', 0.0):.2f}-{event.get('end_time', 0.0):.2f}"
        return f"[ch{channel}] {span} {state} {fields}".rstrip()
    if kind == "active":
        return f"speech start ch{channel} at {event.get('time', 0.0):.2f}"
    if kind == "inactive":
        return f"speech end ch{channel} at {event.get('time', 0.0):.2f}"
    if kind == "ready":
        return (
            f"ready: session {event.get('session_id')}, model {event.get('model')} "
            f"at {event.get('model_sample_rate')} Hz, {event.get('channels')} channel(s)"
        )
    if kind == "done":
        return f"done: {event.get('audio_seconds', 0.0):.2f} s of audio"
    if kind == "error":
        where = ""
        if channel is not None:
            where = f" [ch{channel}]"
            if "start_time" in event and "end_time" in event:
                where += f" {event['start_time']:.2f}-{event['end_time']:.2f}"
        return f"error {event.get('code')}{where}: {event.get('message')}"
    return f"{kind}: {json.dumps(event)}"


class _Printer:
    """Prints each event as it arrives: readable lines, or one JSON object a line."""

    def __init__(self, json_lines: bool, out: TextIO, err: TextIO) -> None:
        self._json = json_lines
        self._out = out
        self._err = err

    def __call__(self, event: dict[str, Any]) -> None:
        if self._json:
            print(json.dumps(event), file=self._out, flush=True)
        elif event.get("type") == "error":
            print(describe_event(event), file=self._err, flush=True)
        else:
            print(describe_event(event), file=self._out, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``streamer client``."""
    parser.description = (
        "Stream an audio file (WAV, FLAC, OGG; µ-law and A-law WAV) in its own format "
        "and print the events. Exits 1 when the server reports an error or the stream "
        "does not finish, 2 when the file cannot be read."
    )
    parser.add_argument("-i", "--input", required=True, type=Path, help="audio file to stream")
    parser.add_argument(
        "--addr", default=DEFAULT_ADDR, help=f"WebSocket URL of a route (default {DEFAULT_ADDR})"
    )
    parser.add_argument(
        "--chunk-size",
        type=_positive_int,
        metavar="BYTES",
        help="bytes per binary frame (default: 100 ms of audio)",
    )
    parser.add_argument(
        "--real-time", action="store_true", help="send at the audio's own pace, as a live source"
    )
    parser.add_argument("--interim-results", action="store_true", help="ask for interim results")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument("--trace-id", help="W3C traceparent to send with the start request")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="send a new random W3C traceparent (printed to stderr), so that the stream's "
        "spans can be found in the tracing backend",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("STREAMER_API_KEY"),
        help="API key for a server that asks for one (default: $STREAMER_API_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for results once the audio is sent (default 60)",
    )


def new_traceparent() -> str:
    """A new W3C ``traceparent``: random trace and span ids, sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    if int(trace_id, 16) == 0 or int(span_id, 16) == 0:  # all-zero ids are invalid
        return new_traceparent()
    return f"00-{trace_id}-{span_id}-01"


def _status(result: StreamResult, err: TextIO) -> int:
    if result.errors:
        count = len(result.errors)
        print(f"streamer client: the server reported {count} error(s)", file=err)
        return 1
    if result.done is None:
        code = result.close_code if result.close_code is not None else "none"
        reason = f": {result.close_reason}" if result.close_reason else ""
        print(
            f"streamer client: the connection closed (code {code}{reason}) "
            "before the stream was done",
            file=err,
        )
        return 1
    return 0


def run(args: argparse.Namespace, addr: str | None = None) -> int:
    """Run ``streamer client`` against ``addr`` (default ``--addr``: a ``ws://`` or
    ``grpc://`` URL); returns the exit status."""
    out, err = sys.stdout, sys.stderr
    try:
        audio = load_audio(args.input)
    except AudioFileError as error:
        print(f"streamer client: cannot read {error}", file=err)
        return 2
    printer = _Printer(args.json, out, err)
    trace_id = args.trace_id
    if args.trace and trace_id is None:
        trace_id = new_traceparent()
        print(f"streamer client: traceparent {trace_id}", file=err)
    try:
        result = asyncio.run(
            stream_file(
                addr or args.addr,
                audio,
                chunk_bytes=args.chunk_size,
                real_time=args.real_time,
                interim=args.interim_results,
                trace_id=trace_id,
                on_event=printer,
                results_timeout=args.timeout,
                api_key=args.api_key,
            )
        )
    except StreamFailed as error:
        print(f"streamer client: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("streamer client: interrupted", file=err)
        return 130
    return _status(result, err)
