"""``/v1/listen`` driven by the real Deepgram clients, unchanged but for their base URL.

The clients run from their own environments (the Makefile's ``.venv-clients``, and npm's
``tests/e2e/js``) as child processes, against a real ``streamer serve``: the official
Python SDK, Pipecat's ``DeepgramSTTService`` in a pipeline, LiveKit's ``deepgram.STT``,
and the JS SDK under Node. The rest (auth, bad input, idle, drain) uses a plain WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
import vendor_clients
import websockets
from conftest import ServerProcess, start_server
from transcripts import SAID, word_error_rate
from vendor_clients import AUDIO, CLIENTS, JS

pytestmark = pytest.mark.e2e

KEY = "dg-test-key-7f3a9c"
CLIENT_TIMEOUT = 90


def python_of(client: str) -> Path:
    return vendor_clients.python_of(client, "Deepgram")


def run_client(command: list[str]) -> dict[str, Any]:
    return vendor_clients.run_client(command, CLIENT_TIMEOUT)


def sdk(server: ServerProcess, audio: Path, query: dict[str, Any], *extra: str) -> dict[str, Any]:
    """The official Python SDK's ``listen.v1.connect(**query)`` streaming ``audio``."""
    return deepgram_script(
        "deepgram_python.py", server, KEY, audio, {"model": "nova-3", **query}, *extra
    )


def deepgram_script(
    script: str, server: ServerProcess, key: str, audio: Path, query: dict[str, Any], *extra: str
) -> dict[str, Any]:
    """One of the Python SDK's client scripts (``clients/<script>``) streaming ``audio``
    with ``query``, authenticated with ``key``."""
    return run_client(
        [
            str(python_of("deepgram")),
            str(CLIENTS / script),
            "--url",
            f"ws://127.0.0.1:{server.port}",
            "--key",
            key,
            "--audio",
            str(audio),
            "--query",
            json.dumps(query),
            *extra,
        ]
    )


def raw(tmp: Path, name: str, subtype: str = "PCM_16") -> Path:
    samples, rate = sf.read(AUDIO / name, dtype="float32")
    path = tmp / f"{name}.{subtype.lower()}.raw"
    sf.write(path, samples, rate, format="RAW", subtype=subtype)
    return path


def of_type(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m for m in result["messages"] if m.get("type") == kind]


def transcript(results: list[dict[str, Any]]) -> str:
    return " ".join(r["channel"]["alternatives"][0]["transcript"] for r in results)


def finals(result: dict[str, Any], channel: int | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in of_type(result, "Results")
        if r["is_final"] and (channel is None or r["channel_index"][0] == channel)
    ]


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shipped Whisper model, with an API key."""
    running = start_server(
        tmp_path_factory.mktemp("dg-whisper"),
        env={
            "STREAMER_INFERENCE__MODEL": "whisper",
            "STREAMER_AUTH__API_KEYS": json.dumps([KEY]),
        },
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def raws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("dg-audio")
    left, rate = sf.read(AUDIO / "front_center_48k.wav", dtype="float32")
    dog, dog_rate = sf.read(AUDIO / "big_dog_8k.wav", dtype="float32")
    right = soxr.resample(dog, dog_rate, rate).astype(np.float32)
    stereo = np.zeros((max(len(left), len(right)) + rate, 2), np.float32)
    stereo[: len(left), 0] = left
    stereo[: len(right), 1] = right
    sf.write(tmp / "stereo48k.raw", stereo, rate, format="RAW", subtype="PCM_16")
    return {
        "jfk": raw(tmp, "jfk.wav"),
        "harvard": raw(tmp, "harvard_16k.wav"),
        "cross_ulaw": raw(tmp, "cross_8k.wav", "ULAW"),
        "stereo": tmp / "stereo48k.raw",
    }


# The official Python SDK.


def test_python_sdk_16k_linear16_with_interims_vad_events_and_utterance_ends(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    query = {
        "encoding": "linear16",
        "sample_rate": 16000,
        "interim_results": "true",
        "vad_events": "true",
        "utterance_end_ms": "1000",
        "punctuate": "true",
        "smart_format": "true",
        "keyterm": ["Americans", "country"],
        "tag": "e2e",
    }
    result = sdk(whisper, raws["jfk"], query, "--pace", "0.05")
    assert result["close_code"] == 1000
    types = [m["type"] for m in result["messages"]]
    assert types[-1] == "Metadata" and types.count("Metadata") == 1
    results = of_type(result, "Results")
    assert any(not r["is_final"] for r in results), "interim results were asked for"
    assert of_type(result, "SpeechStarted") and of_type(result, "UtteranceEnd")
    said = finals(result)
    assert all(r["speech_final"] and not r["from_finalize"] for r in said)
    assert word_error_rate(SAID["jfk.wav"], transcript(said)) <= 0.1, transcript(said)
    metadata = of_type(result, "Metadata")[0]
    assert metadata["duration"] == pytest.approx(11.0, abs=0.01) and metadata["channels"] == 1
    assert metadata["sha256"] == __import__("hashlib").sha256(raws["jfk"].read_bytes()).hexdigest()
    for r in results:
        assert r["channel_index"] == [0, 1] and r["duration"] > 0
        assert r["metadata"]["request_id"] == metadata["request_id"]
        assert r["metadata"]["model_info"]["name"] == "whisper-tiny.en"
        assert metadata["models"] == [r["metadata"]["model_uuid"]]


def test_python_sdk_8k_mulaw(whisper: ServerProcess, raws: dict[str, Path]) -> None:
    query = {"encoding": "mulaw", "sample_rate": 8000}
    result = sdk(whisper, raws["cross_ulaw"], query, "--chunk-bytes", "800")
    assert result["close_code"] == 1000
    said = transcript(finals(result))
    assert word_error_rate(SAID["cross_8k.wav"], said) <= 0.2, said
    assert not of_type(result, "SpeechStarted"), "vad_events was not asked for"


def test_python_sdk_stereo_48k_multichannel_recognises_each_channel(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    query = {"encoding": "linear16", "sample_rate": 48000, "channels": 2, "multichannel": "true"}
    result = sdk(whisper, raws["stereo"], query, "--chunk-bytes", "19200")
    assert result["close_code"] == 1000
    left, right = transcript(finals(result, 0)), transcript(finals(result, 1))
    assert word_error_rate(SAID["front_center_48k.wav"], left) <= 0.5, left
    assert word_error_rate(SAID["big_dog_8k.wav"], right) <= 0.4, right
    assert {tuple(r["channel_index"]) for r in finals(result)} == {(0, 2), (1, 2)}
    assert of_type(result, "Metadata")[0]["channels"] == 2


def test_python_sdk_stereo_without_multichannel_is_mixed_down(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    query = {"encoding": "linear16", "sample_rate": 48000, "channels": 2}
    result = sdk(whisper, raws["stereo"], query, "--chunk-bytes", "19200")
    assert result["close_code"] == 1000
    assert finals(result) and all(r["channel_index"] == [0, 1] for r in finals(result))
    # One recognition of both voices at once: words of the louder one come through.
    assert transcript(finals(result)).strip()
    # Sent as fast as the server takes it, each message was read once: the mixer made
    # exactly the audio sent, and the hash is of exactly the bytes sent.
    sent = raws["stereo"].read_bytes()
    metadata = of_type(result, "Metadata")[0]
    assert metadata["duration"] == pytest.approx(len(sent) / (48000 * 2 * 2), abs=0.01)
    assert metadata["sha256"] == __import__("hashlib").sha256(sent).hexdigest()


def test_python_sdk_finalize_mid_speech_is_not_terminal(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    query = {"encoding": "linear16", "sample_rate": 16000}
    # 1.5 s in, inside "And so my fellow Americans".
    result = sdk(whisper, raws["jfk"], query, "--pace", "0.1", "--finalize-at", "48000")
    assert result["close_code"] == 1000 and result["finalized_at"] == [48000]
    said = finals(result)
    forced = [r for r in said if r["from_finalize"]]
    assert len(forced) == 1 and not forced[0]["speech_final"]
    assert forced[0]["channel"]["alternatives"][0]["transcript"].strip()
    later = said[said.index(forced[0]) + 1 :]
    assert len(later) >= 2 and all(not r["from_finalize"] for r in later)
    assert later[0]["start"] >= forced[0]["start"] + forced[0]["duration"] - 1e-6
    assert word_error_rate("ask what you can do for your country", transcript(later[-1:])) <= 0.2
    assert of_type(result, "Metadata")


def test_finalize_with_nothing_open_gives_one_empty_from_finalize_final(
    whisper: ServerProcess,
) -> None:
    async def go() -> tuple[list[dict[str, Any]], int | None]:
        url = f"ws://127.0.0.1:{whisper.port}/v1/listen?encoding=linear16&sample_rate=16000"
        got: list[dict[str, Any]] = []
        async with websockets.connect(
            url, additional_headers={"Authorization": f"token {KEY}"}
        ) as ws:
            await ws.send(bytes(32000))  # a second of silence
            await ws.send(json.dumps({"type": "Finalize"}))
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(bytes(16000))  # the stream goes on
            await ws.send(json.dumps({"type": "CloseStream"}))
            async for message in ws:
                got.append(json.loads(message))
            return got, ws.close_code

    got, code = asyncio.run(go())
    first = got[0]
    assert first["type"] == "Results" and first["from_finalize"] and first["is_final"]
    assert first["channel"]["alternatives"][0] == {"transcript": "", "confidence": 0.0, "words": []}
    assert first["start"] == pytest.approx(1.0, abs=0.01)
    assert [m["type"] for m in got[1:]] == ["Metadata"] and got[1]["duration"] == 1.5
    assert code == 1000


# Pipecat, LiveKit, the JS SDK.


def test_pipecat_pipeline_with_its_vad_sending_finalize_at_pauses(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    result = run_client(
        [
            str(python_of("pipecat")),
            str(CLIENTS / "pipecat_pipeline.py"),
            "--url",
            f"ws://127.0.0.1:{whisper.port}",
            "--key",
            KEY,
            "--audio",
            str(raws["harvard"]),
        ]
    )
    frames = result["frames"]
    kinds = [f["kind"] for f in frames]
    assert "error" not in kinds, frames
    pauses = [i for i, k in enumerate(kinds) if k == "pause"]
    assert len(pauses) >= 2, kinds
    assert "final" in kinds[pauses[0] :] and "interim" in kinds
    # One socket for the whole conversation: Finalize at each pause did not close it.
    assert result["stderr"].count("Websocket connection initialized") == 1, result["stderr"]
    assert "Disconnecting from Deepgram" in result["stderr"]
    said = " ".join(f["text"] for f in frames if f["kind"] == "final")
    assert word_error_rate(SAID["harvard_16k.wav"], said) <= 0.35, said


def test_livekit_stt_with_its_defaults(whisper: ServerProcess, raws: dict[str, Path]) -> None:
    result = run_client(
        [
            str(python_of("livekit")),
            str(CLIENTS / "livekit_stt.py"),
            "--url",
            f"http://127.0.0.1:{whisper.port}/v1/listen",
            "--key",
            KEY,
            "--audio",
            str(raws["jfk"]),
        ]
    )
    events = result["events"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start_of_speech" and "end_of_speech" in kinds, kinds
    assert "interim_transcript" in kinds
    finals_ = [e for e in events if e["type"] == "final_transcript"]
    assert finals_ and all(e["words"] for e in finals_), finals_
    for event in finals_:
        starts = [w["start"] for w in event["words"]]
        assert starts == sorted(starts) and event["words"][-1]["end"] <= 11.5
    said = " ".join(e["text"] for e in finals_)
    # endpointing=25 cuts at every short pause (the server's floor is 100 ms): more, shorter
    # utterances than a sentence each, so the ceiling is looser.
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.35, said


def test_js_sdk_authenticating_with_the_subprotocol(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "@deepgram" / "sdk").exists():
        pytest.fail("node and tests/e2e/js/node_modules are needed: `make clients` installs them")
    query = {"model": "nova-3", "encoding": "linear16", "sample_rate": 16000}
    result = run_client(
        [
            node,
            str(JS / "listen.mjs"),
            f"ws://127.0.0.1:{whisper.port}",
            KEY,
            str(raws["jfk"]),
            json.dumps(query),
        ]
    )
    assert result["close_code"] == 1000, result
    said = transcript(finals(result))
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.1, said
    assert of_type(result, "Metadata")


# Auth, bad input, idle, drain: a plain WebSocket.


def _status(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(url, **kwargs):
                pass
        response = info.value.response
        return response.status_code, json.loads(response.body or b"{}")

    return asyncio.run(go())


def test_a_wrong_key_is_401_before_the_upgrade_and_never_logged(whisper: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{whisper.port}/v1/listen?encoding=linear16&sample_rate=16000"
    wrong = "dg-wrong-key-0b1d"
    header, _ = _status(url, additional_headers={"Authorization": f"Token {wrong}"})
    protocol, _ = _status(url, subprotocols=["token", wrong])  # type: ignore[list-item]
    missing, _ = _status(url)
    assert header == protocol == missing == 401
    log = whisper.output()
    assert wrong not in log and KEY not in log


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("encoding=flac&sample_rate=16000", "encoding"),
        ("encoding=opus&sample_rate=48000", "encoding"),
        ("sample_rate=16000", "encoding"),
        ("encoding=linear16&sample_rate=0", "sample_rate"),
        ("encoding=linear16", "sample_rate"),
        ("encoding=linear16&sample_rate=16000&channels=0", "channels"),
        ("encoding=linear16&sample_rate=16000&endpointing=soon", "endpointing"),
        ("encoding=linear16&sample_rate=16000&interim_results=maybe", "interim_results"),
        ("encoding=linear16&sample_rate=16000&utterance_end_ms=-5", "utterance_end_ms"),
    ],
)
def test_malformed_parameters_are_400_naming_the_parameter(
    whisper: ServerProcess, query: str, parameter: str
) -> None:
    url = f"ws://127.0.0.1:{whisper.port}/v1/listen?{query}"
    status, body = _status(url, additional_headers={"Authorization": f"Token {KEY}"})
    assert status == 400 and body["parameter"] == parameter, body
    assert parameter in body["err_msg"]


def test_bad_messages_get_errors_and_the_stream_goes_on(server: ServerProcess) -> None:
    """The test model: no text, so empty transcripts and its raw output alongside."""

    async def go() -> tuple[list[dict[str, Any]], int | None]:
        url = (
            f"ws://127.0.0.1:{server.port}/v1/listen?encoding=linear16&sample_rate=16000"
            "&unknown_parameter=1&model=nova-3&language=en"
        )
        got: list[dict[str, Any]] = []
        async with websockets.connect(url) as ws:
            await ws.send("this is not JSON")
            got.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "Reconfigure"}))
            got.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await ws.send((AUDIO / "jfk.wav").read_bytes()[44 : 44 + 64000])
            await ws.send(json.dumps({"type": "CloseStream"}))
            async for message in ws:
                got.append(json.loads(message))
            return got, ws.close_code

    got, code = asyncio.run(go())
    assert got[0]["type"] == "Error" and got[0]["variant"] == "SchemaError"
    assert "JSON" in got[0]["description"]
    assert got[1]["type"] == "Error" and "Reconfigure" in got[1]["description"]
    results = [m for m in got if m["type"] == "Results"]
    assert results and all(r["channel"]["alternatives"][0]["transcript"] == "" for r in results)
    assert all("count" in r["streamer_output"] for r in results)
    assert got[-1]["type"] == "Metadata" and code == 1000
    assert httpx.get(f"{server.http}/api/v1/health").json()["status"] == "ok"


def test_idle_ends_with_deepgrams_error_metadata_and_1011(
    tmp_path: Path,
) -> None:
    idle = start_server(tmp_path / "idle", env={"STREAMER_STREAM__IDLE_SECONDS": "0.5"})

    async def go() -> tuple[list[dict[str, Any]], int | None]:
        url = f"ws://127.0.0.1:{idle.port}/v1/listen?encoding=mulaw&sample_rate=8000"
        async with websockets.connect(url) as ws:
            await ws.send(bytes([0xFF]) * 8000)  # a second of μ-law silence
            got: list[dict[str, Any]] = []
            with pytest.raises(websockets.ConnectionClosedError):
                while True:
                    got.append(json.loads(await ws.recv()))
            return got, ws.close_code

    try:
        got, code = asyncio.run(go())
    finally:
        idle.stop()
    assert [m["type"] for m in got] == ["Error", "Metadata"]
    assert got[0]["code"] == "NET-0001" and "timeout window" in got[0]["description"]
    assert code == 1011


def test_drain_sends_finals_and_metadata_then_1001(tmp_path: Path) -> None:
    draining = start_server(tmp_path / "drain", drain_seconds=0.5)
    speech = (AUDIO / "jfk.wav").read_bytes()[44 : 44 + 96000]

    async def go() -> tuple[list[dict[str, Any]], int | None]:
        url = f"ws://127.0.0.1:{draining.port}/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url) as ws:
            await ws.send(speech)
            await asyncio.sleep(0.5)
            os.kill(draining.process.pid, signal.SIGTERM)
            got = [json.loads(m) async for m in ws]
            return got, ws.close_code

    try:
        got, code = asyncio.run(go())
    finally:
        draining.stop()
    assert got and got[-1]["type"] == "Metadata"
    assert [m for m in got if m["type"] == "Results" and m["is_final"]]
    assert code == 1001
