"""One benchmark stream on its own connection, timing every chunk sent and event received.

Leaner than the client library on purpose: it keeps the send time of every chunk (to
measure each final's delay from the moment its audio left), and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from array import array
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from streamer.client.audio import LoadedAudio
from streamer.client.websocket import MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class StreamAudio(LoadedAudio):
    """What one stream sends (a file, perhaps repeated), and a key naming it."""

    key: str


@dataclass(slots=True)
class StreamRecord:
    """Everything one stream saw, in the event loop's clock (seconds)."""

    index: int
    audio: StreamAudio
    launched: float = 0.0
    connected: float | None = None
    start_sent: float | None = None
    send_times: array[float] = field(default_factory=lambda: array("d"))
    frames_sent: array[int] = field(default_factory=lambda: array("q"))
    """Frames sent in total once each chunk had left (one entry per chunk)."""
    stop_sent: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    close_code: int | None = None
    failure: str | None = None
    """Why the stream could not be carried out (connection refused or lost, timeout)."""
    finished: float | None = None

    @property
    def live(self) -> bool:
        """Connected and not yet finished."""
        return self.connected is not None and self.finished is None


async def _receive(ws: Any, record: StreamRecord) -> None:
    loop = asyncio.get_running_loop()
    ready = False
    try:
        async for message in ws:
            if not isinstance(message, str):
                continue
            try:
                event = json.loads(message)
            except ValueError:
                record.failure = f"the server sent a message that is not JSON: {message[:80]!r}"
                return
            if not isinstance(event, dict):
                continue
            record.events.append(event)
            record.arrivals.append(loop.time())
            kind = event.get("type")
            if kind == "ready":
                ready = True
            elif kind == "done" or (kind == "error" and not ready):
                return  # all results are in, or the start was refused
    except ConnectionClosed:
        pass


async def run_stream(
    url: str,
    record: StreamRecord,
    *,
    chunk_seconds: float = 0.1,
    speed: float = 1.0,
    interim: bool = False,
    word_times: bool = False,
    results_timeout: float = 60.0,
    open_timeout: float = 20.0,
    turn_detection: dict[str, Any] | None = None,
) -> None:
    """Stream ``record.audio`` at ``speed`` times real time (0: as fast as possible);
    ``turn_detection``: the v1 option of that name, sent in the ``start``.

    Never raises for a stream that goes wrong: ``record.failure`` says what happened.
    """
    loop = asyncio.get_running_loop()
    audio = record.audio
    record.launched = loop.time()
    try:
        ws = await connect(
            url,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            open_timeout=open_timeout,
            ping_interval=None,
        )
    except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as error:
        record.failure = f"cannot connect: {error or type(error).__name__}"
        record.finished = loop.time()
        return
    record.connected = loop.time()
    receiver = asyncio.create_task(_receive(ws, record), name="bench-receive")
    chunk_frames = max(1, round(chunk_seconds * audio.sample_rate))
    chunk_bytes = chunk_frames * audio.frame_bytes
    view = memoryview(audio.data)
    pace = chunk_seconds / speed if speed > 0 else 0.0
    try:
        start: dict[str, Any] = {
            "request": "start",
            "format": audio.format,
            "interim_results": interim,
        }
        if word_times:
            start["word_times"] = True
        if turn_detection is not None:
            start["turn_detection"] = turn_detection
        await ws.send(json.dumps(start))
        record.start_sent = begin = loop.time()
        for k, offset in enumerate(range(0, len(view), chunk_bytes)):
            if pace:
                delay = begin + k * pace - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if receiver.done():
                break  # refused, or the server closed the connection
            await ws.send(view[offset : offset + chunk_bytes])
            record.send_times.append(loop.time())
            record.frames_sent.append(min(audio.frames, (k + 1) * chunk_frames))
        if pace and not receiver.done():
            # A live source ends when its audio has played out, not when its last chunk left.
            delay = begin + audio.duration / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if not receiver.done():
            await ws.send(json.dumps({"request": "stop", "disconnect": True}))
            record.stop_sent = loop.time()
        try:
            await asyncio.wait_for(receiver, results_timeout)
        except TimeoutError:
            record.failure = f"no done within {results_timeout} s of the end of the audio"
    except ConnectionClosed:
        await asyncio.gather(receiver, return_exceptions=True)
    except Exception as error:  # a stream's failure is a result, not a crash of the bench
        record.failure = f"{type(error).__name__}: {error}"
    finally:
        receiver.cancel()
        try:
            await asyncio.wait_for(ws.close(), 5.0)
        except Exception:  # the connection is going anyway
            pass
        record.close_code = ws.close_code
        record.finished = loop.time()
