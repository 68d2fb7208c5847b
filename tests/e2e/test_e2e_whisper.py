"""A real speech recognizer behind the real server: ``streamer serve --model whisper``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import websockets
from conftest import HOST, ServerProcess, free_port, start_server
from transcripts import SAID, word_error_rate

from streamer.bench.expected import decode_channels
from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(
        tmp_path_factory.mktemp("whisper"),
        env={"STREAMER_INFERENCE__MODEL": "whisper"},
    )
    yield running
    running.stop()


def _text(finals: list[dict[str, object]]) -> str:
    return " ".join(str(segment["text"]) for segment in finals)


@pytest.mark.parametrize(("name", "ceiling"), [("jfk.wav", 0.05), ("cross_8k.wav", 0.0)])
async def test_the_segmented_route_transcribes_each_utterance(
    whisper_server: ServerProcess, name: str, ceiling: float
) -> None:
    result = await stream_file(whisper_server.ws("segmented"), load_audio(AUDIO / name))
    assert result.ok, result.errors
    assert result.ready is not None and result.ready["model"] == "whisper-tiny.en"
    finals = [s for s in result.segments if s["is_final"]]
    assert finals and all(isinstance(s["text"], str) and s["text"] for s in finals)
    assert word_error_rate(SAID[name], _text(finals)) <= ceiling, _text(finals)


async def test_interim_results_carry_the_words_so_far(whisper_server: ServerProcess) -> None:
    audio = load_audio(AUDIO / "harvard_16k.wav")
    result = await stream_file(whisper_server.ws("segmented"), audio, real_time=True, interim=True)
    assert result.ok, result.errors
    interims = [s for s in result.segments if not s["is_final"]]
    finals = [s for s in result.segments if s["is_final"]]
    assert len(interims) >= 5
    assert word_error_rate(SAID["harvard_16k.wav"], _text(finals)) <= 0.1
    # The last interim is the final's text so far: its words begin the final's.
    said = _text(finals).split()
    last = str(interims[-1]["text"]).split()
    assert len(last) >= len(said) // 2 and last[:3] == said[:3]


async def test_finals_carry_word_times_in_stream_time_when_asked(
    whisper_server: ServerProcess,
) -> None:
    audio = load_audio(AUDIO / "jfk.wav")
    asked, plain = await asyncio.gather(
        stream_file(whisper_server.ws("segmented"), audio, extra_start={"word_times": True}),
        stream_file(whisper_server.ws("segmented"), audio),
    )
    assert asked.ok and plain.ok, (asked.errors, plain.errors)
    finals = [s for s in asked.segments if s["is_final"]]
    assert len(finals) >= 2  # the later segments' words are offset into the stream
    assert word_error_rate(SAID["jfk.wav"], _text(finals)) <= 0.05, _text(finals)
    previous_end = 0.0
    for segment in finals:
        words = cast(list[dict[str, Any]], segment["words"])
        assert "".join(w["word"] for w in words) == "".join(str(segment["text"]).split())
        for word in words:
            assert set(word) == {"word", "start", "end", "confidence"}
            # Stream time: inside its segment (the segmenter pads speech by a few frames).
            low, high = cast(float, segment["start_time"]), cast(float, segment["end_time"])
            assert low - 0.01 <= word["start"] <= word["end"] <= high + 0.01, (word, segment)
            assert word["start"] >= previous_end - 0.01
            previous_end = word["end"]
    # Off by default: the same audio without the option has the same text and no words.
    plain_finals = [s for s in plain.segments if s["is_final"]]
    assert all("words" not in s for s in plain.segments)
    assert [s["text"] for s in plain_finals] == [s["text"] for s in finals]


def test_serve_refuses_to_start_without_the_model_files(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "streamer.cli.main", "serve", "--host", HOST]
    command += ["--port", str(free_port()), "--no-grpc", "--model", "whisper"]
    env = {"STREAMER_WHISPER__MODEL_PATH": str(tmp_path), "PATH": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "no Whisper model in" in done.stderr + done.stdout


def _pcm16(name: str, start: int = 0, end: int | None = None, silence: float = 0.0) -> bytes:
    audio = load_audio(AUDIO / name)
    samples = decode_channels(audio.data, dict(audio.format), 16000)[0][start:end]
    samples = np.concatenate([samples, np.zeros(int(silence * 16000), dtype=np.float32)])
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _repeats(text: str) -> bool:
    """Whether a run of one to four words comes three times in a row."""
    said = text.lower().split()
    return any(
        said[i : i + n] == said[i + n : i + 2 * n] == said[i + 2 * n : i + 3 * n]
        for n in range(1, 5)
        for i in range(len(said) - 3 * n + 1)
    )


async def test_turns_finalized_on_one_socket_come_back_once_each_without_repeats(
    whisper_server: ServerProcess,
) -> None:
    # Short sentences cut as a client's VAD cuts them, each followed by silence, then
    # Finalize; the first is the cut of harvard_16k.wav that loops when decoded unbounded
    # (tests/unit/inference/test_whisper.py).
    turns = [
        (_pcm16("harvard_16k.wav", 18317, 53076, 2.355), "it on the smooth planks"),
        (_pcm16("cross_8k.wav", silence=1.0), SAID["cross_8k.wav"]),
        (_pcm16("front_center_48k.wav", silence=0.5), SAID["front_center_48k.wav"]),
        (_pcm16("big_dog_8k.wav", silence=2.0), SAID["big_dog_8k.wav"]),
    ]
    url = whisper_server.ws().replace("/api/v1/simple", "/v1/listen")
    finals: list[dict[str, Any]] = []
    # A long endpointing: the pauses inside the turns end nothing; Finalize ends each turn.
    query = "encoding=linear16&sample_rate=16000&endpointing=10000"
    async with websockets.connect(f"{url}?{query}") as ws:
        for pcm, _ in turns:
            for at in range(0, len(pcm), 640):
                await ws.send(pcm[at : at + 640])
            await ws.send(json.dumps({"type": "Finalize"}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] == "Results" and message["is_final"]:
                    finals.append(message)
                    if message["from_finalize"]:
                        break
        await ws.send(json.dumps({"type": "CloseStream"}))
        async for _ in ws:
            pass
    assert [m["from_finalize"] for m in finals] == [True] * len(turns)
    texts = [str(m["channel"]["alternatives"][0]["transcript"]) for m in finals]
    assert all(texts) and not any(map(_repeats, texts)), texts
    said = " ".join(texts)
    assert word_error_rate(" ".join(text for _, text in turns), said) <= 0.25, said
    # Each of those finals is timed from its Finalize (/v1/listen counts as segmented).
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{whisper_server.http}/metrics")).text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith('streamer_finalize_seconds_count{route="segmented"}')
    ]
    assert counted and float(counted[0].split()[-1]) >= len(turns), counted
    # The turns' trailing silence lets each final be decoded ahead, at the pause, and the
    # Finalize adopt it (stream.speculative_finals, on by default).
    used = [
        line
        for line in metrics.splitlines()
        if line.startswith("streamer_speculative_finals_total{")
        and 'outcome="used"' in line
        and 'route="segmented"' in line
    ]
    assert used and float(used[0].split()[-1]) >= 1, used
