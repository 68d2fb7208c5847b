"""The floor of this machine: the least CPU one real-time stream can cost, measured here.

Absolute milliseconds move from machine to machine, and from minute to minute on a shared
one; a ratio to a floor measured in the same run does not. The floor is the work no
server design can avoid for one second of one stream's audio:

- the bundled Silero VAD, batched at the engine's batch size: its CPU per frame, times
  ``VAD_SAMPLE_RATE / FRAME_SAMPLES`` (31.25) frames per audio-second;
- the ingest of the audio: receiving one message on a real WebSocket (uvicorn with the
  server's own protocol classes, paced at real time over many connections, so that each
  message wakes the loop as it does under load) and decoding it with the project's
  decoder, times the messages per audio-second (10 for 100 ms messages).

Everything else the server spends is overhead above the floor. The floor's capacity is
the cores left beside the bench client divided by the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from streamer.observability.pressure import usable_cpus
from streamer.segmentation.silero_model import (
    CONTEXT_SAMPLES,
    FRAME_SAMPLES,
    FRAMES_PER_SECOND,
    STATE_SHAPE,
    Float32Array,
    SileroVad,
)

FLOOR_STREAMS: Final = 300
"""Connections the ingest is measured over by default. A message costs less the more
arrive together (one loop wake-up serves several): on a 2-core machine, 160 us each at 10
streams, 75 at 100, 43 at 300. 300 is the count the cost objective is quoted at."""


@dataclass(frozen=True, slots=True)
class Floor:
    """The floor's parts, as measured, and the arithmetic on them."""

    vad_us_per_frame: float
    """CPU microseconds per frame of the batched model (median of the repeats)."""
    vad_batch: int
    """Rows per model call the VAD figure was measured at."""
    ingest_us_per_message: float
    """CPU microseconds the receiving process spent per WebSocket message, decode included."""
    message_seconds: float
    """Audio per message."""
    cpus: int
    """CPUs the server and the bench client share."""
    vad_us_range: tuple[float, float] = (0.0, 0.0)
    """Least and most of the VAD repeats (how steady the machine was)."""
    ingest_messages: int = 0
    ingest_streams: int = 0

    @property
    def vad_ms_per_stream_second(self) -> float:
        return self.vad_us_per_frame * FRAMES_PER_SECOND / 1000

    @property
    def ingest_ms_per_stream_second(self) -> float:
        return self.ingest_us_per_message / self.message_seconds / 1000

    @property
    def ms_per_stream_second(self) -> float:
        """CPU milliseconds per second of one stream's audio, at the floor."""
        return self.vad_ms_per_stream_second + self.ingest_ms_per_stream_second

    def capacity(self, cores: float) -> float:
        """Real-time streams ``cores`` can carry at the floor."""
        return max(cores, 0.0) * 1000 / self.ms_per_stream_second

    def document(self) -> dict[str, Any]:
        """The floor as JSON-able data."""
        return {
            "ms_per_stream_second": round(self.ms_per_stream_second, 4),
            "vad_us_per_frame": round(self.vad_us_per_frame, 2),
            "vad_us_per_frame_range": [round(v, 2) for v in self.vad_us_range],
            "vad_batch": self.vad_batch,
            "vad_frames_per_second": FRAMES_PER_SECOND,
            "vad_ms_per_stream_second": round(self.vad_ms_per_stream_second, 4),
            "ingest_us_per_message": round(self.ingest_us_per_message, 2),
            "ingest_messages_per_second": round(1 / self.message_seconds, 3),
            "ingest_ms_per_stream_second": round(self.ingest_ms_per_stream_second, 4),
            "ingest_messages_measured": self.ingest_messages,
            "ingest_streams": self.ingest_streams,
            "cpus": self.cpus,
        }

    def describe(self) -> str:
        """One line: the floor and its parts."""
        return (
            f"floor: {self.ms_per_stream_second:.2f} ms CPU per stream-second "
            f"(VAD {self.vad_us_per_frame:.1f} us/frame at batch {self.vad_batch} "
            f"x {FRAMES_PER_SECOND:g}, ingest {self.ingest_us_per_message:.1f} us/message "
            f"x {1 / self.message_seconds:g}); {self.capacity(self.cpus):.0f} streams "
            f"on all {self.cpus} cores"
        )


def _significant(value: float, digits: int = 4) -> float:
    """A share kept to its first significant digits: a fixed number of decimals would
    round 2 streams against a floor of 670 to 0.003, 1% off."""
    return float(f"{value:.{digits}g}")


def against_floor(floor: Floor, summary: dict[str, Any]) -> dict[str, Any]:
    """A run's figures as ratios to the floor: server CPU per stream-second over the
    floor's, and the streams carried as a share of the floor's capacity on the cores left
    beside the bench client (its mean over the run)."""
    client = float((summary.get("client_cpu") or {}).get("cores_mean") or 0.0)
    cores_left = max(floor.cpus - client, 0.0)
    capacity = floor.capacity(cores_left)
    streams = int(summary["streams"]["ok"])
    cost = (summary.get("server_cpu") or {}).get("ms_per_stream_audio_second")
    figures = {
        "floor_ms_per_stream_second": round(floor.ms_per_stream_second, 4),
        "server_ms_per_stream_second": cost,
        "server_cost_ratio": (
            None if cost is None else round(float(cost) / floor.ms_per_stream_second, 3)
        ),
        "cores_left_beside_client": round(cores_left, 3),
        "floor_capacity_streams": round(capacity, 1),
        "streams": streams,
        "share_of_floor_capacity": _significant(streams / capacity) if capacity else None,
    }
    threads = (summary.get("server_cpu") or {}).get("threads")
    if threads:
        figures["parts"] = _parts(floor, threads)
    return figures


def _parts(floor: Floor, threads: dict[str, Any]) -> dict[str, Any]:
    """Each front-end thread's cost set against the floor's part it does: the VAD engine's
    against the floor's VAD, the event loop's against its ingest; the rest has none."""
    floors = {
        "vad_engine": floor.vad_ms_per_stream_second,
        "event_loop": floor.ingest_ms_per_stream_second,
    }
    parts: dict[str, Any] = {}
    for part, figures in threads.items():
        ms = figures.get("ms_per_stream_audio_second")
        under = floors.get(part)
        parts[part] = {
            "ms_per_stream_second": ms,
            "floor_ms_per_stream_second": None if under is None else round(under, 4),
            "ratio": None if ms is None or not under else round(float(ms) / under, 3),
            "over_floor_ms": None if ms is None else round(float(ms) - (under or 0.0), 4),
        }
    return parts


def describe_against(figures: dict[str, Any]) -> str:
    """One line: a run against the floor."""
    ratio = figures["server_cost_ratio"]
    share = figures["share_of_floor_capacity"]
    cost = (
        "server cpu n/a"
        if ratio is None
        else f"server {figures['server_ms_per_stream_second']} ms per stream-second "
        f"= {ratio:.2f} x the floor"
    )
    line = (
        f"against the floor: {cost}; {figures['streams']} streams = "
        f"{'n/a' if share is None else f'{share:.0%}'} of the floor's capacity "
        f"({figures['floor_capacity_streams']:.0f} streams on "
        f"{figures['cores_left_beside_client']:.2f} cores left beside the client)"
    )
    parts = figures.get("parts") or {}
    named = (
        ("vad_engine", "VAD engine", "the floor's VAD"),
        ("event_loop", "event loop", "the floor's ingest"),
        ("rest", "the rest (model workers, other threads)", None),
    )
    said = []
    for key, name, under in named:
        part = parts.get(key)
        if not part or part["ms_per_stream_second"] is None:
            continue
        text = f"{name} {part['ms_per_stream_second']} ms"
        if under is not None and part["ratio"] is not None:
            text += f" = {part['ratio']:.2f} x {under}"
        said.append(text)
    if said:
        line += "\n  per stream-second: " + "; ".join(said)
    return line


# -- the VAD -------------------------------------------------------------------------------


def speech_frames(samples: Float32Array) -> Float32Array:
    """16 kHz samples as whole frames ``(n, 512)``; silence when there are none."""
    whole = len(samples) // FRAME_SAMPLES
    if whole == 0:
        return np.zeros((1, FRAME_SAMPLES), dtype=np.float32)
    return np.ascontiguousarray(samples[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES))


def measure_vad(
    frames: Float32Array,
    batch: int,
    *,
    repeats: int = 5,
    seconds_per_repeat: float = 0.25,
    model: SileroVad | None = None,
) -> tuple[float, float, float]:
    """CPU microseconds per frame of ``batch``-row model calls over real ``frames``:
    (median, least, most) of ``repeats`` runs of about ``seconds_per_repeat`` each.

    Each row is its own stream at its own place in the audio, with its recurrent state
    carried from call to call as the engine does. Process CPU time, not wall time: the
    floor is work, and a busy machine stretches wall time but not work.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    model = model or SileroVad()
    n = len(frames)
    offsets = np.arange(batch) * 7919 % n  # rows spread over the audio
    state = np.zeros((STATE_SHAPE[0], batch, STATE_SHAPE[1]), dtype=np.float32)
    context = np.zeros((batch, CONTEXT_SAMPLES), dtype=np.float32)
    step = 0

    def calls(count: int) -> float:
        nonlocal state, context, step
        inputs = [frames[(offsets + step + k) % n] for k in range(count)]
        step += count
        began = time.process_time()
        for window in inputs:
            _, state, context = model.run(window, state, context)
        return time.process_time() - began

    calls(2)  # warm-up: the first calls allocate
    per_call = max(calls(3) / 3, 1e-5)
    count = max(3, math.ceil(seconds_per_repeat / per_call))
    figures = [calls(count) / (count * batch) * 1e6 for _ in range(max(repeats, 1))]
    return statistics.median(figures), min(figures), max(figures)


# -- the ingest ----------------------------------------------------------------------------

_SERVER = """
import sys
from streamer.bench.floor import serve_ingest
serve_ingest(sys.argv[1], int(sys.argv[2]))
"""


def serve_ingest(host: str, port: int) -> None:
    """Receive WebSocket audio the way the server does, and decode it; nothing else.

    uvicorn on uvloop with the server's own HTTP and WebSocket protocol classes, Starlette's
    ``WebSocket``, the v1 codec and ``Decoder``. Text messages: ``start <format JSON>``
    sets the decoder, ``sync`` is answered with ``ok`` once every earlier message is
    decoded, ``cpu`` with this process's CPU seconds.
    """
    import uvicorn
    from starlette.websockets import WebSocket

    from streamer.audio.decode import Decoder
    from streamer.bench.expected import audio_format
    from streamer.codecs import v1_json
    from streamer.config import ServerSettings
    from streamer.protocol.inputs import Audio
    from streamer.transport.limits import uvicorn_protocols, uvicorn_ws_max_size

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        decoder = None
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if (data := message.get("bytes")) is not None:
                audio = v1_json.decode_bytes(data)
                if decoder is not None and isinstance(audio, Audio):
                    decoder.feed(audio.data)
            elif (text := message.get("text")) is not None:
                if text.startswith("start "):
                    decoder = Decoder(audio_format(json.loads(text[6:])))
                elif text == "sync":
                    await ws.send_text("ok")
                elif text == "cpu":
                    await ws.send_text(repr(time.process_time()))

    settings = ServerSettings()
    http, ws = uvicorn_protocols(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=http,
        ws=ws,
        ws_max_size=uvicorn_ws_max_size(settings),
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
    )
    uvicorn.Server(config).run()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _connect(url: str, deadline: float) -> ClientConnection:
    while True:
        try:
            return await connect(url, compression=None, ping_interval=None, open_timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _ask(ws: ClientConnection, question: str) -> str:
    await ws.send(question)
    answer = await ws.recv()
    return answer if isinstance(answer, str) else answer.decode()


async def measure_ingest(
    chunks: Sequence[bytes],
    fmt: dict[str, Any],
    *,
    message_seconds: float = 0.1,
    streams: int = FLOOR_STREAMS,
    seconds: float = 3.0,
    host: str = "127.0.0.1",
    start_timeout: float = 60.0,
) -> tuple[float, int]:
    """CPU microseconds a receiving process spends per audio message, decode included,
    and the messages measured.

    ``streams`` connections to a fresh ingest server (``serve_ingest``, its own process)
    each send ``chunks`` (cycled) every ``message_seconds``, their sends spread evenly, for
    ``seconds``. The server's CPU is read from the server itself before and after (once
    every message has been decoded), so its start and the connections' handshakes are
    left out.
    """
    if not chunks:
        raise ValueError("no audio to send")
    port = _free_port(host)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVER,
        host,
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + start_timeout
        url = f"ws://{host}:{port}/"
        try:
            first = await _connect(url, deadline)
        except OSError as error:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            _, err = await process.communicate()
            raise RuntimeError(
                f"the ingest server did not start: {err.decode(errors='replace')[-2000:]}"
            ) from error
        conns = [first] + [await _connect(url, deadline) for _ in range(streams - 1)]
        start = "start " + json.dumps(fmt)
        for ws in conns:
            await ws.send(start)
        for ws in conns:
            await _ask(ws, "sync")
        count = max(1, round(seconds / message_seconds))
        loop = asyncio.get_running_loop()
        cpu_0 = float(await _ask(first, "cpu"))
        begin = loop.time() + 0.05

        async def send(i: int, ws: ClientConnection) -> None:
            offset = i * message_seconds / len(conns)
            for k in range(count):
                delay = begin + offset + k * message_seconds - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(chunks[(i + k) % len(chunks)])
            await _ask(ws, "sync")

        await asyncio.gather(*(send(i, ws) for i, ws in enumerate(conns)))
        cpu_1 = float(await _ask(first, "cpu"))
        for ws in conns:
            await ws.close()
        messages = count * len(conns)
        return (cpu_1 - cpu_0) / messages * 1e6, messages
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.communicate(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.communicate()


async def measure_floor(
    samples_16k: Float32Array,
    chunks: Sequence[bytes],
    fmt: dict[str, Any],
    *,
    message_seconds: float = 0.1,
    vad_batch: int,
    ingest_streams: int = FLOOR_STREAMS,
    ingest_seconds: float = 3.0,
) -> Floor:
    """Measure both parts of the floor on this machine, now (about 5 seconds)."""
    median, low, high = await asyncio.to_thread(measure_vad, speech_frames(samples_16k), vad_batch)
    ingest, messages = await measure_ingest(
        chunks,
        fmt,
        message_seconds=message_seconds,
        streams=ingest_streams,
        seconds=ingest_seconds,
    )
    return Floor(
        vad_us_per_frame=median,
        vad_batch=vad_batch,
        ingest_us_per_message=ingest,
        message_seconds=message_seconds,
        cpus=usable_cpus(),
        vad_us_range=(low, high),
        ingest_messages=messages,
        ingest_streams=ingest_streams,
    )
