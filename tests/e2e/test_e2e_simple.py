"""The simple route end to end: the real client, a real server, real speech.

The test model answers ``{"count": samples}`` for every chunk at 16 kHz, so whatever the
input's rate, format or chunking, the counts must add up to the audio's length at 16 kHz.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, start_server
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from streamer.client import FileOptions, LoadedAudio, load_audio, stream_file
from streamer.client.websocket import open_connection, run_stream

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
MODEL_RATE = 16000
FILES = ["jfk.wav", "front_center_48k.wav", "big_dog_8k.wav", "cross_8k.wav"]


def expected_samples(frames: int, rate: int) -> int:
    return round(frames * MODEL_RATE / rate)


def check_channel(segments: list[dict[str, Any]], expected: int) -> None:
    """In order, contiguous from 0, each count matching its span, adding up to ``expected``."""
    assert segments, "no segments"
    position = 0.0
    total = 0
    for seg in segments:
        assert seg["is_final"] is True
        assert seg["start_time"] == pytest.approx(position, abs=1e-6)
        assert seg["end_time"] > seg["start_time"]
        assert seg["count"] == round((seg["end_time"] - seg["start_time"]) * MODEL_RATE)
        position = seg["end_time"]
        total += seg["count"]
    assert abs(total - expected) <= 1, (total, expected)


def check_stream(
    events: list[dict[str, Any]],
    *,
    frames: int,
    rate: int,
    channels: int = 1,
    errors: tuple[str, ...] = (),
) -> None:
    """A whole stream: ready first, done last, every channel's results complete."""
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ready", kinds
    assert kinds[-1] == "done", kinds
    assert kinds.count("ready") == 1 and kinds.count("done") == 1, kinds
    assert events[0]["channels"] == channels
    assert events[0]["model_sample_rate"] == MODEL_RATE
    assert tuple(e["code"] for e in events if e["type"] == "error") == errors
    segments = [e for e in events if e["type"] == "segment"]
    assert {s["channel"] for s in segments} == set(range(channels))
    for channel in range(channels):
        check_channel(
            [s for s in segments if s["channel"] == channel], expected_samples(frames, rate)
        )
    assert events[-1]["audio_seconds"] == pytest.approx(frames / rate, abs=1e-6)


def check_audio(events: list[dict[str, Any]], audio: LoadedAudio) -> None:
    check_stream(events, frames=audio.frames, rate=audio.sample_rate, channels=audio.channels)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli.main", "client", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def next_event(ws: ClientConnection, wait: float = 5.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), wait)
    assert isinstance(message, str)
    event: dict[str, Any] = json.loads(message)
    return event


# The client, as a command and as a library.


@pytest.mark.parametrize("name", FILES)
def test_cli_streams_file_as_fast_as_possible(server: Any, name: str) -> None:
    proc = run_cli("-i", str(AUDIO / name), "--addr", server.ws(), "--json")
    assert proc.returncode == 0, proc.stderr
    info = sf.info(str(AUDIO / name))
    check_stream(json_lines(proc.stdout), frames=info.frames, rate=info.samplerate)


def test_cli_streams_in_real_time(server: Any) -> None:
    path = AUDIO / "front_center_48k.wav"
    info = sf.info(str(path))
    proc = run_cli("-i", str(path), "--addr", server.ws(), "--json", "--real-time")
    assert proc.returncode == 0, proc.stderr
    check_stream(json_lines(proc.stdout), frames=info.frames, rate=info.samplerate)


def test_cli_prints_readable_lines(server: Any) -> None:
    proc = run_cli("-i", str(AUDIO / "jfk.wav"), "--addr", server.ws(), "--chunk-size", "3333")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ready: ")
    assert lines[1] == "[ch0] 0.00-1.00 final count=16000"
    assert lines[-1] == "done: 11.00 s of audio"
    assert proc.stderr == ""


def test_cli_fails_cleanly_without_a_server() -> None:
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        proc = run_cli("-i", str(AUDIO / "jfk.wav"), "--addr", f"ws://127.0.0.1:{port}/")
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_fails_cleanly_on_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nothing like audio")
    proc = run_cli("-i", str(bad))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", FILES)
async def test_api_streams_file_as_fast_as_possible(server: Any, name: str) -> None:
    audio = load_audio(AUDIO / name)
    seen: list[dict[str, Any]] = []
    result = await stream_file(server.ws(), audio, on_event=seen.append)
    check_audio(result.events, audio)
    assert seen == result.events
    assert result.ok
    assert result.close_code == 1000
    assert len(result.arrivals) == len(result.events)
    assert result.bytes_sent == len(audio.data)


async def test_api_streams_in_real_time(server: Any) -> None:
    audio = load_audio(AUDIO / "front_center_48k.wav")
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{trace_id}-b7ad6b7169203331-01"
    result = await stream_file(server.ws(), audio, real_time=True, trace_id=traceparent)
    check_audio(result.events, audio)
    # The ready event names the stream's own span, in the client's trace.
    assert result.events[0]["trace_id"].split("-")[1] == trace_id
    # Paced, not bursted: the last frame leaves about one frame before the audio's end.
    assert result.last_audio_seconds is not None and result.stop_seconds is not None
    assert result.last_audio_seconds >= audio.duration - 0.15
    assert result.stop_seconds >= audio.duration - 0.01
    assert result.stop_seconds < audio.duration + 0.5


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server without a message-rate limit: audio messages shorter than
    1/max_messages_per_second s count against it, and one-byte messages are that short."""
    env = {"STREAMER_SERVER__MAX_MESSAGES_PER_SECOND": "0"}
    running = start_server(tmp_path_factory.mktemp("unlimited"), env=env)
    yield running
    running.stop()


@pytest.mark.parametrize("chunk_bytes", [1, 7, 4095, 1 << 19])
async def test_any_chunking_gives_the_same_results(unlimited: Any, chunk_bytes: int) -> None:
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    if chunk_bytes == 1:  # one byte a message is slow; a second of audio is enough
        audio = LoadedAudio(audio.data[:16000], audio.format, 8000)
    result = await stream_file(unlimited.ws(), audio, chunk_bytes=chunk_bytes)
    check_audio(result.events, audio)


async def test_concurrent_streams_each_get_their_own_results(server: Any) -> None:
    audios = [load_audio(AUDIO / name) for name in FILES * 3]
    results = await asyncio.gather(
        *(stream_file(server.ws(), audio, chunk_bytes=2000 + i) for i, audio in enumerate(audios))
    )
    for audio, result in zip(audios, results, strict=True):
        check_audio(result.events, audio)
    assert len({r.events[0]["session_id"] for r in results}) == len(audios)


# Formats: multi-channel, the raw WAV codings, compressed files.


def _read_float(path: Path, frames: int | None = None) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float64", always_2d=True, frames=frames or -1)
    return data, rate


async def test_stereo_file_gives_results_for_both_channels(server: Any, tmp_path: Path) -> None:
    left, rate = _read_float(AUDIO / "jfk.wav")
    right, rate_right = _read_float(AUDIO / "harvard_16k.wav")
    assert rate == rate_right
    n = min(len(left), len(right))
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.hstack([left[:n], right[:n]]), rate, subtype="PCM_24")
    audio = load_audio(path)
    assert audio.format == {"channels": 2, "sample_rate": rate, "bit_depth": 24, "is_float": False}
    result = await stream_file(server.ws(), audio)
    check_stream(result.events, frames=n, rate=rate, channels=2)


WAV_CODINGS: dict[str, dict[str, Any]] = {
    "PCM_U8": {"bit_depth": 8, "is_float": False},
    "PCM_16": {"bit_depth": 16, "is_float": False},
    "PCM_24": {"bit_depth": 24, "is_float": False},
    "PCM_32": {"bit_depth": 32, "is_float": False},
    "FLOAT": {"bit_depth": 32, "is_float": True},
    "DOUBLE": {"bit_depth": 64, "is_float": True},
    "ULAW": {"bit_depth": 8, "is_float": False, "encoding": "mulaw"},
    "ALAW": {"bit_depth": 8, "is_float": False, "encoding": "alaw"},
}


def _decode_pcm(audio: LoadedAudio) -> np.ndarray:
    """Linear PCM bytes to float64 frames, as the protocol defines them."""
    fmt = audio.format
    raw = np.frombuffer(audio.data, dtype=np.uint8)
    if fmt["is_float"]:
        out = np.frombuffer(audio.data, dtype="<f4" if fmt["bit_depth"] == 32 else "<f8")
    elif fmt["bit_depth"] == 8:
        out = (raw.astype(np.float64) - 128) / 128
    elif fmt["bit_depth"] == 24:
        triples = raw.reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        out = np.where(ints >= 1 << 23, ints - (1 << 24), ints) / float(1 << 23)
    else:
        bits = fmt["bit_depth"]
        out = np.frombuffer(audio.data, dtype=f"<i{bits // 8}") / float(1 << (bits - 1))
    return np.asarray(out, dtype=np.float64).reshape(-1, audio.channels)


@pytest.mark.parametrize("subtype", list(WAV_CODINGS))
async def test_wav_codings_are_sent_as_they_are(server: Any, tmp_path: Path, subtype: str) -> None:
    source, rate = _read_float(AUDIO / "big_dog_8k.wav")
    path = tmp_path / f"big_dog_{subtype}.wav"
    sf.write(str(path), source, rate, subtype=subtype)
    audio = load_audio(path)
    assert audio.format == {"channels": 1, "sample_rate": rate, **WAV_CODINGS[subtype]}
    assert audio.frames == len(source)
    assert len(audio.data) == audio.frames * audio.frame_bytes
    if "encoding" not in audio.format:
        expected, _ = _read_float(path)
        np.testing.assert_allclose(_decode_pcm(audio), expected, atol=1e-9)
    result = await stream_file(server.ws(), audio)
    check_audio(result.events, audio)


def test_wav_chunks_are_walked_with_their_padding(tmp_path: Path) -> None:
    samples = np.arange(-300, 300, dtype="<i2")
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\0"  # odd size, one pad byte
    body += b"data" + struct.pack("<I", samples.nbytes) + samples.tobytes()
    path = tmp_path / "padded.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    audio = load_audio(path)
    assert audio.data == samples.tobytes()
    assert audio.frames == sf.info(str(path)).frames == len(samples)


@pytest.mark.parametrize(
    ("fmt", "subtype", "bit_depth"),
    [("FLAC", "PCM_16", 16), ("FLAC", "PCM_24", 32), ("OGG", "VORBIS", 16)],
)
async def test_compressed_files_are_decoded_at_their_own_rate(
    server: Any, tmp_path: Path, fmt: str, subtype: str, bit_depth: int
) -> None:
    source, rate = _read_float(AUDIO / "front_center_48k.wav")
    path = tmp_path / f"front_center.{fmt.lower()}"
    sf.write(str(path), source, rate, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.format == {
        "channels": 1,
        "sample_rate": 48000,
        "bit_depth": bit_depth,
        "is_float": False,
    }
    assert audio.frames == sf.info(str(path)).frames
    result = await stream_file(server.ws(), audio)
    check_audio(result.events, audio)


# Protocol faults: each is reported, and the connection still works.

GOOD_FORMAT = {"channels": 1, "sample_rate": 8000, "bit_depth": 16, "is_float": False}


def _start(**fmt: Any) -> str:
    return json.dumps({"request": "start", "format": {**GOOD_FORMAT, **fmt}})


BAD_INPUTS: dict[str, tuple[str | bytes, str, str]] = {
    "invalid_json": ('{"request": "start", ', "invalid_json", ""),
    "unknown_field": (
        json.dumps({"request": "start", "format": GOOD_FORMAT, "loudness": 11}),
        "invalid_message",
        "loudness",
    ),
    "audio_before_start": (b"\x00\x01" * 80, "not_started", ""),
    "stop_before_start": (json.dumps({"request": "stop"}), "not_started", ""),
    "no_channels": (_start(channels=0), "invalid_format", "channels"),
    "too_many_channels": (_start(channels=1000), "invalid_format", "channels"),
    "rate_too_low": (_start(sample_rate=7999), "invalid_format", "sample_rate"),
    "rate_too_high": (_start(sample_rate=192001), "invalid_format", "sample_rate"),
    "odd_bit_depth": (_start(bit_depth=12), "invalid_format", "bit_depth"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_is_reported_and_the_connection_goes_on(server: Any, case: str) -> None:
    message, code, names = BAD_INPUTS[case]
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    ws = await open_connection(server.ws())
    async with ws:
        await ws.send(message)
        error = await next_event(ws)
        assert error["type"] == "error"
        assert error["code"] == code
        assert names in error["message"]
        result = await run_stream(ws, audio)
        check_audio(result.events, audio)


async def test_second_start_is_refused_and_the_stream_goes_on(server: Any) -> None:
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    half = len(audio.data) // 2
    ws = await open_connection(server.ws())
    async with ws:
        await ws.send(json.dumps({"request": "start", "format": audio.format}))
        events = [await next_event(ws)]
        await ws.send(audio.data[:half])
        await ws.send(json.dumps({"request": "start", "format": audio.format}))
        await ws.send(audio.data[half:])
        await ws.send(json.dumps({"request": "stop"}))
        while events[-1]["type"] != "done":
            events.append(await next_event(ws))
        check_stream(
            events, frames=audio.frames, rate=audio.sample_rate, errors=("already_started",)
        )
        result = await run_stream(ws, audio)
        check_audio(result.events, audio)


async def test_several_streams_on_one_connection(server: Any) -> None:
    ws = await open_connection(server.ws())
    sessions = set()
    async with ws:
        for i, name in enumerate(FILES):
            audio = load_audio(AUDIO / name)
            last = i == len(FILES) - 1
            result = await run_stream(ws, audio, FileOptions(chunk_bytes=1000 + i), disconnect=last)
            check_audio(result.events, audio)
            sessions.add(result.events[0]["session_id"])
        assert result.close_code == 1000
    assert len(sessions) == len(FILES)


# Model faults and shutdown.


def test_cli_exits_non_zero_when_the_model_fails(failing_server: Any) -> None:
    path = AUDIO / "big_dog_8k.wav"
    proc = run_cli("-i", str(path), "--addr", failing_server.ws(), "--json")
    assert proc.returncode == 1
    assert "error" in proc.stderr
    events = json_lines(proc.stdout)
    assert events[0]["type"] == "ready"
    assert events[-1]["type"] == "done"
    errors = events[1:-1]
    assert errors and all(e["type"] == "error" for e in errors)
    assert {e["code"] for e in errors} == {"model_error"}
    # One error per chunk, in order, covering the whole audio.
    position = 0.0
    for e in errors:
        assert e["channel"] == 0
        assert e["start_time"] == pytest.approx(position, abs=1e-6)
        position = e["end_time"]
    assert position == pytest.approx(2.5, abs=1e-4)


def test_cli_prints_model_errors_to_stderr(failing_server: Any) -> None:
    proc = run_cli("-i", str(AUDIO / "front_center_48k.wav"), "--addr", failing_server.ws())
    assert proc.returncode == 1
    assert "error model_error [ch0] 0.00-1.00: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("done: ")


async def _health(client: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"{url}/api/v1/health")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def test_graceful_shutdown(launch: Callable[..., Any]) -> None:
    drain = 2.0
    srv = launch(drain_seconds=drain)
    audio = load_audio(AUDIO / "jfk.wav")
    sent = 3 * audio.bytes_per_second
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=2.0) as http:
        ws = await open_connection(srv.ws())
        await ws.send(json.dumps({"request": "start", "format": audio.format}))
        events = [await next_event(ws)]
        for offset in range(0, sent, 3200):
            await ws.send(audio.data[offset : min(offset + 3200, sent)])

        srv.process.send_signal(signal.SIGTERM)
        signalled = loop.time()

        # The load balancer is told at once; the open stream is still there.
        for _ in range(100):
            status, body = await _health(http, srv.http)
            if status == 503:
                break
            await asyncio.sleep(0.01)
        assert (status, body["status"]) == (503, "draining")
        assert body["streams"]["simple"] == 1

        # New streams are refused.
        late = await open_connection(srv.ws())
        refusal: list[dict[str, Any]] = []
        try:
            await late.send(_start())
            while True:
                refusal.append(await next_event(late))
        except ConnectionClosed:
            pass
        assert late.close_code == 1001
        assert all(e["code"] == "shutting_down" for e in refusal)

        # The open stream gets its results, then the going-away close after the drain.
        try:
            while True:
                events.append(await next_event(ws, wait=drain + 5))
        except ConnectionClosed:
            pass
        closed = loop.time() - signalled
        assert ws.close_code == 1001
        check_stream(events, frames=3 * audio.sample_rate, rate=audio.sample_rate)
        assert closed >= drain - 0.1

    assert await asyncio.to_thread(srv.process.wait, 15) == 0
