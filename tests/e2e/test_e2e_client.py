"""The client library against a real server, over both transports: the README's example as
it is written, finalize, interim results, a refused start, and the end at ``done``."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, start_server

from streamer.client import (
    Done,
    SegmentResult,
    SpeechEnded,
    Stream,
    StreamRefused,
    connect,
    load_audio,
    stream_file,
)
from streamer.events import Event

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
RATE = 16000
TRANSPORTS = ["ws", "grpc"]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the test model on WebSocket and gRPC."""
    running = start_server(tmp_path_factory.mktemp("client"), grpc=True)
    yield running
    running.stop()


def url(server: ServerProcess, transport: str, route: str = "segmented") -> str:
    return server.ws(route) if transport == "ws" else server.grpc(route)


def readme_example() -> str:
    """The first Python block of the README's "Client library" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Client library\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no Python example in the README's Client library section"
    return found.group(1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_readme_example_prints_the_streams_results(
    both: ServerProcess, transport: str, tmp_path: Path
) -> None:
    example = tmp_path / "example.py"
    example.write_text(readme_example())
    address = url(both, transport)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(example), address, str(AUDIO / "jfk.wav")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"ready: session \S+, model test", lines[0]), lines[0]
    assert lines[-1] == "done: 11.00 s of audio"
    # What it prints is what the stream holds: the same finals and speech starts as the
    # whole-file helper gets for the same audio.
    reference = await stream_file(address, AUDIO / "jfk.wav")
    assert reference.ok
    finals = [
        f"{e['start_time']:.2f}-{e['end_time']:.2f} final {{'count': {e['count']}}}"
        for e in reference.segments
        if e["is_final"]
    ]
    starts = [f"speech at {e['time']:.2f}" for e in reference.of_type("active")]
    assert len(finals) >= 3
    assert [line for line in lines if " final " in line] == finals
    assert [line for line in lines if line.startswith("speech at")] == starts
    for line in lines[1:-1]:
        assert re.fullmatch(
            r"speech at \d+\.\d\d|\d+\.\d\d-\d+\.\d\d (final|interim) \{'count': \d+\}", line
        ), line


async def read_until(stream: Stream, *, the_end: bool = False) -> list[Event]:
    """Events until a final segment (or, with ``the_end``, until iteration ends)."""
    events: list[Event] = []
    async for event in stream:
        events.append(event)
        if not the_end and isinstance(event, SegmentResult) and event.final:
            break
    return events


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_finalize_forces_finals_and_iteration_ends_at_done(
    both: ServerProcess, transport: str
) -> None:
    audio = load_audio(AUDIO / "jfk.wav")
    cut = int(1.5 * RATE) * 2
    async with connect(url(both, transport), format=audio.format) as stream:
        assert stream.ready.route == "segmented" and stream.ready.model_sample_rate == RATE
        await stream.send(audio.data[:cut])
        await stream.finalize()
        first = await read_until(stream)
        assert first[-1] == SegmentResult(
            channel=0, start=first[-1].start, end=1.5, final=True, output=first[-1].output
        )
        assert first[-2] == SpeechEnded(channel=0, time=1.5)
        await stream.send(audio.data[cut:])
        await stream.stop()
        rest = await read_until(stream, the_end=True)
        assert rest[-1] == Done(audio_seconds=11.0)
        assert stream.done == Done(audio_seconds=11.0)
        assert [event async for event in stream] == []  # nothing after done
    finals = [e for e in first + rest if isinstance(e, SegmentResult) and e.final]
    assert len(finals) >= 3
    assert all(e.output["count"] == round((e.end - e.start) * RATE) for e in finals)
    assert stream.close_code == (1000 if transport == "ws" else 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_interim_results_come_while_the_audio_is_still_coming(
    both: ServerProcess, transport: str
) -> None:
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    step = audio.chunk_bytes(0.1)
    async with connect(
        url(both, transport), format=audio.format, interim_results=True, interim_interval=0.5
    ) as stream:

        async def send() -> None:
            for offset in range(0, len(audio.data), step):
                await stream.send(audio.data[offset : offset + step])
                await asyncio.sleep(0.1)  # as a live source
            await stream.stop()

        sender = asyncio.create_task(send())
        segments: list[tuple[SegmentResult, bool]] = []
        async for event in stream:
            if isinstance(event, SegmentResult):
                segments.append((event, sender.done()))
        await sender
    interims = [(s, late) for s, late in segments if not s.final]
    [final] = [s for s, _ in segments if s.final]
    assert len(interims) >= 2
    assert all(s.end < final.end and s.start == final.start for s, _ in interims)
    assert not any(late for _, late in interims), "interims came only after the audio"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_start_raises_and_the_server_goes_on(
    both: ServerProcess, transport: str
) -> None:
    audio = load_audio(AUDIO / "big_dog_8k.wav")
    bad = {**audio.format, "bit_depth": 12}
    with pytest.raises(StreamRefused, match="invalid_format") as caught:
        async with connect(url(both, transport, "simple"), format=bad):
            pytest.fail("a 12-bit stream was opened")
    assert caught.value.error is not None
    assert caught.value.error.code == "invalid_format"
    assert "bit_depth" in caught.value.error.message
    assert caught.value.message is not None and caught.value.message["type"] == "error"
    if transport == "grpc":
        assert caught.value.close_code == 3  # INVALID_ARGUMENT
    result = await stream_file(url(both, transport, "simple"), audio)
    assert result.ok
