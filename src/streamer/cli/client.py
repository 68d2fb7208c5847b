"""``streamer client``: stream an audio file to a server and print what comes back.

Also the asynchronous API that the end-to-end tests and the load generator drive:
:func:`load_audio` reads a file into the bytes the protocol carries, :func:`stream_file`
runs one stream on a new connection, and :func:`run_stream` one start/stop cycle on a
connection that is already open.

The client sends the file's own format (rate, channels, sample coding); resampling is the
server's job, so what is measured is what a real client would cost it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

DEFAULT_ADDR = "ws://127.0.0.1:8080/api/v1/simple"
DEFAULT_CHUNK_SECONDS = 0.1
MAX_MESSAGE_BYTES = 1 << 24
"""Largest event the client accepts; events are small, this only guards against garbage."""

EventHandler = Callable[[dict[str, Any]], None]


class AudioFileError(Exception):
    """The file cannot be read, or holds audio the protocol cannot carry."""


class StreamFailed(Exception):
    """The stream could not be carried out: no connection, a lost one, or no answer in time."""


# Reading audio files.


@dataclass(frozen=True, slots=True)
class LoadedAudio:
    """Audio ready to send: interleaved little-endian frames and the ``format`` describing them."""

    data: bytes
    format: dict[str, Any]
    """The ``format`` object of the ``start`` request."""
    frames: int

    @property
    def channels(self) -> int:
        return int(self.format["channels"])

    @property
    def sample_rate(self) -> int:
        return int(self.format["sample_rate"])

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel."""
        return int(self.format["bit_depth"]) // 8 * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.frame_bytes * self.sample_rate

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate

    def chunk_bytes(self, seconds: float = DEFAULT_CHUNK_SECONDS) -> int:
        """Bytes of ``seconds`` of audio, in whole frames (at least one)."""
        return max(1, round(seconds * self.sample_rate)) * self.frame_bytes


_WAVE_PCM = 0x0001
_WAVE_FLOAT = 0x0003
_WAVE_ALAW = 0x0006
_WAVE_MULAW = 0x0007
_WAVE_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class WavLayout:
    """Where a WAV file's samples are and how they are coded (from its ``fmt `` chunk)."""

    format_tag: int
    """The WAVE format tag; for WAVE_FORMAT_EXTENSIBLE, the tag of its sub-format."""
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int
    data_offset: int
    data_length: int


def parse_wav(raw: bytes) -> WavLayout:
    """Find the ``fmt `` and ``data`` chunks of a RIFF/WAVE (or RF64) file.

    A file cut short keeps the data it has, as audio tools do.
    """
    if len(raw) < 12 or raw[:4] not in (b"RIFF", b"RF64", b"BW64") or raw[8:12] != b"WAVE":
        raise AudioFileError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int, int] | None = None
    ds64_data_size: int | None = None
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = pos + 8
        if chunk_id == b"ds64" and size >= 16 and body + 16 <= len(raw):
            (ds64_data_size,) = struct.unpack_from("<Q", raw, body + 8)
        elif chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(raw):
                raise AudioFileError("the fmt chunk is too short")
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", raw, body)
            if tag == _WAVE_EXTENSIBLE and size >= 40 and body + 26 <= len(raw):
                # The sub-format GUID starts with the plain format tag.
                (tag,) = struct.unpack_from("<H", raw, body + 24)
            fmt = (tag, channels, rate, block_align, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioFileError("the data chunk comes before the fmt chunk")
            if size == _UNKNOWN_SIZE:
                size = ds64_data_size if ds64_data_size is not None else len(raw) - body
            tag, channels, rate, block_align, bits = fmt
            return WavLayout(
                format_tag=tag,
                channels=channels,
                sample_rate=rate,
                block_align=block_align,
                bits_per_sample=bits,
                data_offset=body,
                data_length=max(0, min(size, len(raw) - body)),
            )
        pos = body + size + (size & 1)  # chunks are padded to an even size
    raise AudioFileError("no data chunk")


def _wav_format(layout: WavLayout) -> dict[str, Any] | None:
    """The protocol format that carries this WAV's samples unchanged, or None if none does."""
    if layout.channels < 1 or layout.block_align % layout.channels:
        return None
    # The container size, not the valid bits: 20-bit samples in 24-bit words are sent as 24.
    bits = layout.block_align // layout.channels * 8
    base: dict[str, Any] = {"channels": layout.channels, "sample_rate": layout.sample_rate}
    tag = layout.format_tag
    if tag == _WAVE_PCM and bits in (8, 16, 24, 32):
        return {**base, "bit_depth": bits, "is_float": False}
    if tag == _WAVE_FLOAT and bits in (32, 64):
        return {**base, "bit_depth": bits, "is_float": True}
    if tag in (_WAVE_MULAW, _WAVE_ALAW) and bits == 8:
        encoding = "mulaw" if tag == _WAVE_MULAW else "alaw"
        return {**base, "bit_depth": 8, "is_float": False, "encoding": encoding}
    return None


# soundfile subtype -> (dtype to decode to, bit_depth, is_float); anything else is int16.
_DECODE_AS: dict[str, tuple[str, int, bool]] = {
    "PCM_24": ("<i4", 32, False),
    "PCM_32": ("<i4", 32, False),
    "FLOAT": ("<f4", 32, True),
    "DOUBLE": ("<f8", 64, True),
}


def _decode(path: str, info: Any) -> LoadedAudio:
    """Decode with libsndfile to the nearest linear PCM, at the file's own rate and channels."""
    dtype, bit_depth, is_float = _DECODE_AS.get(str(info.subtype), ("<i2", 16, False))
    try:
        samples, rate = sf.read(path, dtype=np.dtype(dtype).name, always_2d=True)
    except (RuntimeError, OSError) as error:
        raise AudioFileError(f"{path}: {error}") from None
    data = np.ascontiguousarray(samples, dtype=dtype).tobytes()
    fmt = {
        "channels": int(samples.shape[1]),
        "sample_rate": int(rate),
        "bit_depth": bit_depth,
        "is_float": is_float,
    }
    return LoadedAudio(data=data, format=fmt, frames=int(samples.shape[0]))


def load_audio(path: str | os.PathLike[str]) -> LoadedAudio:
    """Read a WAV, FLAC or OGG file (or anything libsndfile reads) into sendable audio.

    WAV files whose samples the protocol carries as they are (PCM 8 to 32 bits, float 32 and
    64, µ-law, A-law) are sent byte for byte; other files are decoded to linear PCM.
    """
    name = os.fspath(path)
    try:
        info = sf.info(name)
    except (RuntimeError, OSError) as error:
        raise AudioFileError(f"{name}: {error}") from None
    if str(info.format) not in ("WAV", "WAVEX", "RF64"):
        return _decode(name, info)
    try:
        raw = Path(name).read_bytes()
    except OSError as error:
        raise AudioFileError(f"{name}: {error}") from None
    try:
        layout = parse_wav(raw)
    except AudioFileError as error:
        raise AudioFileError(f"{name}: {error}") from None
    fmt = _wav_format(layout)
    if fmt is None:
        return _decode(name, info)
    frames = layout.data_length // layout.block_align
    ours = (layout.sample_rate, layout.channels, frames)
    theirs = (int(info.samplerate), int(info.channels), int(info.frames))
    if ours != theirs:
        raise AudioFileError(
            f"{name}: the WAV header says (rate, channels, frames) = {ours}, "
            f"libsndfile says {theirs}"
        )
    start = layout.data_offset
    return LoadedAudio(
        data=raw[start : start + frames * layout.block_align], format=fmt, frames=frames
    )


# Streaming.


@dataclass(slots=True)
class StreamResult:
    """What one stream got back, and when: times are seconds since its ``start`` was sent."""

    events: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """When each event arrived, one per event."""
    connect_seconds: float | None = None
    """Time to open the connection (``stream_file`` only)."""
    ready_seconds: float | None = None
    last_audio_seconds: float | None = None
    """When the last audio frame was sent."""
    stop_seconds: float | None = None
    done_seconds: float | None = None
    bytes_sent: int = 0
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def segments(self) -> list[dict[str, Any]]:
        return self.of_type("segment")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.of_type("error")

    @property
    def ready(self) -> dict[str, Any] | None:
        found = self.of_type("ready")
        return found[0] if found else None

    @property
    def done(self) -> dict[str, Any] | None:
        found = self.of_type("done")
        return found[-1] if found else None

    @property
    def ok(self) -> bool:
        """The stream ran to ``done`` without an error event."""
        return self.done is not None and not self.errors


async def _receive(
    ws: ClientConnection,
    result: StreamResult,
    t0: float,
    on_event: EventHandler | None,
    *,
    until_close: bool,
) -> None:
    """Collect events until ``done`` (or the close, when disconnecting) or a refused start."""
    loop = asyncio.get_running_loop()
    try:
        async for message in ws:
            if not isinstance(message, str):
                continue  # the protocol has no binary events; ignore, as unknown events
            try:
                event = json.loads(message)
            except ValueError:
                raise StreamFailed(
                    f"the server sent a message that is not JSON: {message[:80]!r}"
                ) from None
            if not isinstance(event, dict):
                raise StreamFailed(
                    f"the server sent a message that is not an object: {message[:80]!r}"
                )
            now = loop.time() - t0
            result.events.append(event)
            result.arrivals.append(now)
            kind = event.get("type")
            if kind == "ready":
                result.ready_seconds = now
            elif kind == "done":
                result.done_seconds = now
            if on_event is not None:
                on_event(event)
            if kind == "done" and not until_close:
                return
            if kind == "error" and result.ready_seconds is None:
                return  # the start was refused: nothing more will come for this stream
    except ConnectionClosed:
        pass  # the caller reads the close code off the connection


async def send_audio(
    write: Callable[[memoryview], Awaitable[None]],
    audio: LoadedAudio,
    chunk_bytes: int,
    real_time: bool,
    receiver: asyncio.Future[Any],
    result: StreamResult,
    t0: float,
) -> None:
    """Write the audio in chunks of ``chunk_bytes``, paced in real time when asked.

    Stops early once ``receiver`` is done (the stream was refused, or the connection is
    gone). In real time it returns when the audio has played out, as a live source would.
    """
    loop = asyncio.get_running_loop()
    view = memoryview(audio.data)
    rate = audio.bytes_per_second
    begin = loop.time()
    for offset in range(0, len(view), chunk_bytes):
        if receiver.done():
            return
        if real_time:
            # Against the start time, not the previous send, so sleeps do not drift.
            delay = begin + offset / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = view[offset : offset + chunk_bytes]
        await write(frame)
        result.bytes_sent += len(frame)
    result.last_audio_seconds = loop.time() - t0
    if real_time:
        # A live source ends when its audio has played out, not when its last chunk begins.
        delay = begin + len(view) / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


async def run_stream(
    ws: ClientConnection,
    audio: LoadedAudio,
    *,
    chunk_bytes: int | None = None,
    real_time: bool = False,
    interim: bool = False,
    trace_id: str | None = None,
    extra_start: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    disconnect: bool = False,
    results_timeout: float | None = 60.0,
) -> StreamResult:
    """One stream on an open connection: ``start``, the audio, ``stop``, then its events.

    Returns at ``done`` (or, with ``disconnect``, once the server has closed the
    connection), or as soon as the server refuses the ``start``. ``results_timeout`` bounds
    the wait after the audio is sent; ``StreamFailed`` when it runs out.
    """
    if chunk_bytes is None:
        chunk_bytes = audio.chunk_bytes()
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    loop = asyncio.get_running_loop()
    result = StreamResult()
    start: dict[str, Any] = {
        "request": "start",
        "format": dict(audio.format),
        "interim_results": interim,
    }
    if trace_id is not None:
        start["trace_id"] = trace_id
    if extra_start:
        start.update(extra_start)
    t0 = loop.time()
    receiver = asyncio.create_task(
        _receive(ws, result, t0, on_event, until_close=disconnect), name="client-receive"
    )
    try:
        try:
            await ws.send(json.dumps(start))
            await send_audio(ws.send, audio, chunk_bytes, real_time, receiver, result, t0)
            if not receiver.done():
                await ws.send(json.dumps({"request": "stop", "disconnect": disconnect}))
                result.stop_seconds = loop.time() - t0
        except ConnectionClosed:
            pass  # the receiver sees the close too; the result tells how the stream ended
        try:
            await asyncio.wait_for(receiver, results_timeout)
        except TimeoutError:
            waited = "the close" if disconnect else "done"
            raise StreamFailed(f"no {waited} from the server within {results_timeout} s") from None
    finally:
        receiver.cancel()
    if ws.close_code is not None:
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


async def open_connection(url: str, *, open_timeout: float = 10.0) -> ClientConnection:
    """Connect as the client does: no compression, room for any event."""
    try:
        return await connect(
            url, max_size=MAX_MESSAGE_BYTES, compression=None, open_timeout=open_timeout
        )
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as error:
        detail = str(error) or type(error).__name__
        raise StreamFailed(f"cannot connect to {url}: {detail}") from None


async def stream_file(
    url: str,
    audio: LoadedAudio,
    *,
    chunk_bytes: int | None = None,
    real_time: bool = False,
    interim: bool = False,
    trace_id: str | None = None,
    extra_start: dict[str, Any] | None = None,
    on_event: EventHandler | None = None,
    results_timeout: float | None = 60.0,
    open_timeout: float = 10.0,
) -> StreamResult:
    """One stream on a new connection, ending with ``stop`` and ``disconnect: true``.

    ``chunk_bytes`` is the size of each binary frame (default: 100 ms of audio);
    ``real_time`` paces them as a live source would. Raises ``StreamFailed`` when the
    connection cannot be opened or the server does not answer within ``results_timeout``.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    ws = await open_connection(url, open_timeout=open_timeout)
    connected = loop.time() - began
    async with ws:
        result = await run_stream(
            ws,
            audio,
            chunk_bytes=chunk_bytes,
            real_time=real_time,
            interim=interim,
            trace_id=trace_id,
            extra_start=extra_start,
            on_event=on_event,
            disconnect=True,
            results_timeout=results_timeout,
        )
    result.connect_seconds = connected
    result.close_code = ws.close_code
    result.close_reason = ws.close_reason or ""
    return result


# The command.


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
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for results once the audio is sent (default 60)",
    )
    from streamer.cli import grpc_client  # imports this module: load it once this one is

    grpc_client.add_arguments(parser)


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


def run(args: argparse.Namespace) -> int:
    """Run ``streamer client``; returns the exit status."""
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
    stream, addr = stream_file, args.addr
    if args.grpc is not None:
        from streamer.cli import grpc_client

        stream, addr = grpc_client.bind(args), args.grpc
    try:
        result = asyncio.run(
            stream(
                addr,
                audio,
                chunk_bytes=args.chunk_size,
                real_time=args.real_time,
                interim=args.interim_results,
                trace_id=trace_id,
                on_event=printer,
                results_timeout=args.timeout,
            )
        )
    except StreamFailed as error:
        print(f"streamer client: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("streamer client: interrupted", file=err)
        return 130
    return _status(result, err)
