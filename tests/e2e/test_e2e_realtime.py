"""OpenAI Realtime transcription sessions at /v1/realtime, driven by the official SDK.

The SDK runs in the clients' environment (``make clients``), as a subprocess that prints
the server events it parsed, one JSON object a line.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import HOST, ServerProcess, start_server
from transcripts import SAID, word_error_rate
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "openai" / "bin" / "python"
SESSION = ROOT / "tests" / "e2e" / "clients" / "realtime_session.py"
KEY = "realtime-test-key-0001"

VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def pcm24k(name: str, *, silence_after: float = 0.0) -> bytes:
    """A recording as 24 kHz mono 16-bit PCM, with trailing silence if asked."""
    samples, rate = sf.read(AUDIO / name, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    resampled = soxr.resample(mono, rate, 24_000)
    resampled = np.concatenate([resampled, np.zeros(round(silence_after * 24_000), np.float32)])
    return (np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes()


def session(
    server: ServerProcess,
    tmp_path: Path,
    *,
    audio: bytes = b"",
    updates: list[dict[str, Any]] | None = None,
    real_time: bool = False,
    commit: bool = False,
    api_key: str = KEY,
    settle: float = 1.0,
) -> list[dict[str, Any]]:
    """Run one SDK session; the server events it received, in order."""
    assert CLIENTS_PYTHON.exists(), "the clients' environment is missing: run `make clients`"
    raw = tmp_path / "audio.raw"
    raw.write_bytes(audio)
    command = [
        str(CLIENTS_PYTHON),
        str(SESSION),
        "--http",
        server.http,
        "--ws",
        f"ws://{HOST}:{server.port}",
        "--api-key",
        api_key,
        "--audio",
        str(raw),
        "--updates",
        json.dumps(updates or []),
    ]
    if real_time:
        command.append("--real-time")
    if commit:
        command.append("--commit")
    command += ["--settle", str(settle)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:] + server.output()[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1] == {"type": "client.closed"}
    return events[:-1]


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def transcription(update: dict[str, Any]) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": update}}


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(
        tmp_path_factory.mktemp("realtime-whisper"),
        env={"STREAMER_INFERENCE__MODEL": "whisper"},
    )
    yield running
    running.stop()


def check_ids(events: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids), "every event has its own event_id"


def test_server_vad_session_transcribes_real_speech(
    whisper_server: ServerProcess, tmp_path: Path
) -> None:
    update = {
        "format": {"type": "audio/pcm", "rate": 24000},
        "transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": VAD,
    }
    events = session(
        whisper_server,
        tmp_path,
        audio=pcm24k("jfk.wav", silence_after=1.5),
        updates=[transcription(update)],
        real_time=True,
    )
    assert events[0]["type"] == "session.created"
    assert events[0]["session"]["type"] == "transcription"
    (updated,) = of(events, "session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    check_ids(events)
    started = of(events, "input_audio_buffer.speech_started")
    stopped = of(events, "input_audio_buffer.speech_stopped")
    committed = of(events, "input_audio_buffer.committed")
    completed = of(events, "conversation.item.input_audio_transcription.completed")
    assert started and len(started) == len(stopped) == len(committed) == len(completed)
    items = [e["item_id"] for e in started]
    assert [e["item_id"] for e in committed] == items == [e["item_id"] for e in completed]
    assert [e["previous_item_id"] for e in committed] == [None, *items[:-1]]
    spans = zip(started, stopped, strict=True)
    assert all(a["audio_start_ms"] < b["audio_end_ms"] for a, b in spans)
    assert of(events, "conversation.item.input_audio_transcription.delta"), "interim deltas"
    for item in items:
        pieces = [
            e["delta"]
            for e in of(events, "conversation.item.input_audio_transcription.delta")
            if e["item_id"] == item
        ]
        (done,) = [e for e in completed if e["item_id"] == item]
        # Deltas carry words as they settle, each adding some; the final is the item's
        # transcript. Where it goes on from what the deltas carried, they spell it out
        # whole (the last delta completes it); where it revised their words, it does not
        # begin with them. Nothing of the item follows it.
        assert all(pieces), pieces
        deltas, transcript = "".join(pieces), done["transcript"]
        assert deltas == transcript or not transcript.startswith(deltas), (deltas, transcript)
        assert events.index(done) > max(
            (i for i, e in enumerate(events) if e.get("item_id") == item and e is not done),
            default=-1,
        )
        assert done["usage"]["type"] == "duration" and done["usage"]["seconds"] > 0
    text = " ".join(e["transcript"] for e in completed)
    assert word_error_rate(SAID["jfk.wav"], text) <= 0.1, text
    assert not of(events, "error")


@pytest.mark.parametrize("eagerness", ["high", "auto"])
def test_semantic_vad_session_commits_and_completes_each_turn(
    whisper_server: ServerProcess, tmp_path: Path, eagerness: str
) -> None:
    """The end-of-turn model decides each item: jfk's two sentences are two turns (its
    pause after "Americans" scores 0.96), each committed and completed once."""
    update = {
        "format": {"type": "audio/pcm", "rate": 24000},
        "turn_detection": {"type": "semantic_vad", "eagerness": eagerness},
    }
    events = session(
        whisper_server,
        tmp_path,
        audio=pcm24k("jfk.wav", silence_after=2.5),
        updates=[transcription(update)],
        real_time=True,
        # A commit ends a turn still open; the session waits for what the server still
        # owes (on a busy machine its recognizer may be seconds behind the audio).
        commit=True,
        settle=5.0,
    )
    (updated,) = of(events, "session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": eagerness,
    }
    check_ids(events)
    started = of(events, "input_audio_buffer.speech_started")
    committed = of(events, "input_audio_buffer.committed")
    completed = of(events, "conversation.item.input_audio_transcription.completed")
    assert len(started) == len(committed) == len(completed) >= 2, [e["type"] for e in events]
    items = [e["item_id"] for e in started]
    assert [e["item_id"] for e in committed] == items == [e["item_id"] for e in completed]
    assert all(e["transcript"] for e in completed)
    text = " ".join(e["transcript"] for e in completed)
    assert word_error_rate(SAID["jfk.wav"], text) <= 0.15, text
    assert not of(events, "error")


def test_manual_commit_ends_the_item(whisper_server: ServerProcess, tmp_path: Path) -> None:
    update = {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}
    events = session(
        whisper_server,
        tmp_path,
        audio=pcm24k("harvard_16k.wav"),
        updates=[transcription(update)],
        commit=True,
    )
    check_ids(events)
    assert not of(events, "input_audio_buffer.speech_started"), "no VAD without turn detection"
    (committed,) = of(events, "input_audio_buffer.committed")
    (completed,) = of(events, "conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == committed["item_id"]
    assert word_error_rate(SAID["harvard_16k.wav"], completed["transcript"]) <= 0.15
    assert completed["usage"]["seconds"] == pytest.approx(
        sf.info(AUDIO / "harvard_16k.wav").duration, abs=0.05
    )


def test_bad_updates_are_errors_and_the_session_goes_on(
    server: ServerProcess, tmp_path: Path
) -> None:
    updates = [
        transcription({"format": {"type": "audio/pcm", "rate": 16000}}),
        transcription({"turn_detection": {"type": "semantic_vad", "eagerness": "very"}}),
        transcription({"turn_detection": {**VAD, "threshold": 7}}),
        transcription({"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}),
    ]
    audio = pcm24k("cross_8k.wav")
    events = session(server, tmp_path, audio=audio, updates=updates, commit=True)
    errors = of(events, "error")
    assert [e["error"]["param"] for e in errors] == [
        "session.audio.input.format.rate",
        "session.audio.input.turn_detection.eagerness",
    ]
    assert all(e["error"]["type"] == "invalid_request_error" for e in errors)
    first, second = of(events, "session.updated")
    # Clamped, and echoed as clamped.
    threshold = first["session"]["audio"]["input"]["turn_detection"]["threshold"]
    assert 0.5 < threshold < 1.0
    assert second["session"]["audio"]["input"]["turn_detection"] is None
    (completed,) = of(events, "conversation.item.input_audio_transcription.completed")
    # The test model counts the samples it got (at its 16 kHz): every one committed.
    seconds = len(audio) / 48_000
    # (the resampler's last few milliseconds of latency are not flushed by a commit)
    count = json.loads(completed["transcript"])["count"]
    assert count == pytest.approx(16000 * seconds, rel=0.02)
    assert completed["usage"]["seconds"] == pytest.approx(seconds, abs=0.05)


async def test_an_oversized_append_is_an_error_event_not_a_close(server: ServerProcess) -> None:
    import base64

    url = f"ws://{HOST}:{server.port}/v1/realtime?intent=transcription"
    async with connect(url) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        big = base64.b64encode(bytes(40_000)).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": big}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error"
        assert error["error"]["code"] == "input_audio_buffer_too_large"
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "***"}))
        assert json.loads(await ws.recv())["error"]["param"] == "audio"
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(
        tmp_path_factory.mktemp("realtime-keys"), env={"STREAMER_AUTH__API_KEYS": f'["{KEY}"]'}
    )
    yield running
    running.stop()


def test_the_sdk_presents_its_key_as_a_bearer_token(
    keyed_server: ServerProcess, tmp_path: Path
) -> None:
    events = session(keyed_server, tmp_path, audio=pcm24k("cross_8k.wav", silence_after=1.0))
    assert events[0]["type"] == "session.created"
    assert of(events, "conversation.item.input_audio_transcription.completed")


def test_a_wrong_key_is_refused_before_the_upgrade(
    keyed_server: ServerProcess, tmp_path: Path
) -> None:
    command = [
        str(CLIENTS_PYTHON),
        str(SESSION),
        "--http",
        keyed_server.http,
        "--ws",
        f"ws://{HOST}:{keyed_server.port}",
        "--api-key",
        "not-the-key-at-all",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "401" in done.stderr


async def test_a_browser_sends_the_key_as_subprotocols(keyed_server: ServerProcess) -> None:
    url = f"ws://{HOST}:{keyed_server.port}/v1/realtime?intent=transcription"
    offered = ["realtime", f"openai-insecure-api-key.{KEY}"]
    async with connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert KEY not in str(ws.response.headers)
        assert json.loads(await ws.recv())["type"] == "session.created"
    with pytest.raises(InvalidStatus) as refused:
        bad = ["realtime", "openai-insecure-api-key.wrong-key-123"]
        async with connect(url, subprotocols=bad):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 401
