"""``/v3/ws`` driven by the real AssemblyAI clients, unchanged but for their base URL.

The clients run from their own environments (the Makefile's ``.venv-clients``, and npm's
``tests/e2e/js``) as child processes, against a real ``streamer serve`` with Whisper: the
``assemblyai`` Python SDK's v3 ``StreamingClient``, Pipecat's ``AssemblyAISTTService`` in
a pipeline, LiveKit's ``assemblyai.STT``, and the JS SDK under Node (behind a TLS proxy:
it speaks ``wss://`` only). Temporary tokens and bad input use plain HTTP and WebSocket.

Turns end by the stream's turn detection (the end-of-turn model at pauses, or the
client's ``ForceEndpoint``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
import vendor_clients
import websockets
from conftest import ServerProcess, start_server
from transcripts import SAID, word_error_rate
from vendor_clients import AUDIO, CLIENTS, JS

pytestmark = pytest.mark.e2e

KEY = "aai-test-key-5e1d"
SECRET = "aai-token-secret-0123456789abcdef0123"
CLIENT_TIMEOUT = 120


def python_of(client: str) -> Path:
    return vendor_clients.python_of(client, "AssemblyAI")


def run_client(command: list[str]) -> dict[str, Any]:
    return vendor_clients.run_client(command, CLIENT_TIMEOUT)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shipped Whisper model, with an API key and tokens."""
    running = start_server(
        tmp_path_factory.mktemp("aai-whisper"),
        env={
            "STREAMER_INFERENCE__MODEL": "whisper",
            "STREAMER_AUTH__API_KEYS": json.dumps([KEY]),
            "STREAMER_AUTH__TOKEN_SECRET": SECRET,
        },
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def raws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("aai-audio")
    out = {}
    for name in ("jfk.wav", "harvard_16k.wav"):
        samples, rate = sf.read(AUDIO / name, dtype="float32")
        assert rate == 16000
        out[name] = tmp / f"{name}.raw"
        sf.write(out[name], samples, rate, format="RAW", subtype="PCM_16")
    return out


def sdk(server: ServerProcess, audio: Path, params: dict[str, Any], *extra: str) -> dict[str, Any]:
    """The Python SDK's ``StreamingClient`` with ``api_host="ws://127.0.0.1:PORT"``."""
    return run_client(
        [
            str(python_of("assemblyai")),
            str(CLIENTS / "assemblyai_python.py"),
            "--host",
            f"ws://127.0.0.1:{server.port}",
            "--audio",
            str(audio),
            "--params",
            json.dumps(params),
            *extra,
        ]
    )


def of_type(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m for m in result["messages"] if m.get("type") == kind]


def formatted_ends(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in of_type(result, "Turn") if t["end_of_turn"] and t["turn_is_formatted"]]


def text(turns: list[dict[str, Any]]) -> str:
    return " ".join(t["transcript"] for t in turns)


def mint(server: ServerProcess, expires: int = 60, key: str = KEY) -> httpx.Response:
    return httpx.get(
        f"{server.http}/v3/token",
        params={"expires_in_seconds": expires},
        headers={"Authorization": key},
    )


# The Python SDK.


def test_python_sdk_formatted_turns_with_word_times_and_termination(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    params = {"sample_rate": 16000, "format_turns": True, "keyterms_prompt": ["Americans"]}
    result = sdk(whisper, raws["jfk.wav"], params, "--key", KEY, "--pace", "0.02")
    assert result["errors"] == [], result["errors"]
    types = [m["type"] for m in result["messages"]]
    assert types[0] == "Begin" and types[-1] == "Termination" and types.count("Termination") == 1
    turns = formatted_ends(result)
    assert [t["turn_order"] for t in turns] == list(range(len(turns)))
    assert word_error_rate(SAID["jfk.wav"], text(turns)) <= 0.15, text(turns)
    for turn in of_type(result, "Turn"):
        if turn["end_of_turn"] and not turn["turn_is_formatted"]:
            assert turn["transcript"] == turn["transcript"].lower()  # unformatted
    ends = [w["end"] for t in turns for w in t["words"]]
    assert ends and ends == sorted(ends) and ends[-1] <= 11_500
    assert all(w["word_is_final"] and w["start"] <= w["end"] for t in turns for w in t["words"])
    termination = of_type(result, "Termination")[0]
    assert termination["audio_duration_seconds"] == 11


def test_python_sdk_force_endpoint_mid_utterance_ends_the_turn_there(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    params = {"sample_rate": 16000, "format_turns": True}
    result = sdk(
        whisper, raws["jfk.wav"], params, "--key", KEY, "--pace", "0.1", "--force-at", "48000"
    )
    assert result["errors"] == [], result["errors"]
    turns = formatted_ends(result)
    forced = [t for t in turns if t["received_at"] >= result["forced_at"]]
    # The first turn to end after ForceEndpoint (at 1.5 s) ends where the audio stood.
    assert forced and forced[0]["words"], turns
    assert forced[0]["words"][-1]["end"] <= 1_800, forced[0]
    assert word_error_rate(SAID["jfk.wav"], text(turns)) <= 0.25, text(turns)


def test_python_sdk_with_a_temporary_token_once(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    response = mint(whisper)
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    params = {"sample_rate": 16000}
    first = sdk(whisper, raws["jfk.wav"], params, "--token", token)
    assert first["errors"] == [] and of_type(first, "Begin") and of_type(first, "Termination")
    again = sdk(whisper, raws["jfk.wav"], params, "--token", token)
    assert [e["code"] for e in again["errors"]] == [401] and not again["messages"]


def test_token_requests_are_checked(whisper: ServerProcess) -> None:
    assert mint(whisper, key="aai-wrong-key-1").status_code == 401
    assert mint(whisper, expires=0).status_code == 400
    assert mint(whisper, expires=601).status_code == 400
    token = mint(whisper).json()["token"]
    # A token opens /v3/ws only: it mints nothing.
    assert mint(whisper, key=token).status_code == 401


# Pipecat, LiveKit, the JS SDK.


def test_pipecat_with_its_defaults_gets_finalized_transcripts(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    result = run_client(
        [
            str(python_of("pipecat")),
            str(CLIENTS / "pipecat_assemblyai.py"),
            "--url",
            f"ws://127.0.0.1:{whisper.port}/v3/ws",
            "--key",
            KEY,
            "--audio",
            str(raws["harvard_16k.wav"]),
        ]
    )
    frames = result["frames"]
    kinds = [f["kind"] for f in frames]
    assert "error" not in kinds, frames
    finals = [f for f in frames if f["kind"] == "final"]
    assert finals and any(f["finalized"] for f in finals), frames
    said = " ".join(f["text"] for f in finals)
    assert word_error_rate(SAID["harvard_16k.wav"], said) <= 0.35, said


def test_livekit_stt_with_its_defaults(whisper: ServerProcess, raws: dict[str, Path]) -> None:
    result = run_client(
        [
            str(python_of("livekit")),
            str(CLIENTS / "livekit_assemblyai.py"),
            "--url",
            f"ws://127.0.0.1:{whisper.port}",
            "--key",
            KEY,
            "--audio",
            str(raws["jfk.wav"]),
        ]
    )
    events = result["events"]
    kinds = [e["type"] for e in events]
    assert "start_of_speech" in kinds and "preflight_transcript" in kinds, kinds
    finals = [e for e in events if e["type"] == "final_transcript"]
    assert finals and all(e["words"] for e in finals), finals
    said = " ".join(e["text"] for e in finals)
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.3, said


class TlsProxy:
    """TLS in front of the server, as a deployment terminates it (the JS SDK speaks
    ``wss://`` only): a self-signed certificate for 127.0.0.1, bytes relayed both ways."""

    def __init__(self, directory: Path, target: int) -> None:
        self.cert = directory / "cert.pem"
        key = directory / "key.pem"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(self.cert)),
            ],
            check=True,
            capture_output=True,
        )
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(self.cert, key)
        self._target = target
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self._context)
        )
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(Exception):
                sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:  # also when the proxy stops: no socket outlives it
            for end in (up_writer, writer):
                end.close()
                with contextlib.suppress(Exception):
                    await end.wait_closed()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def test_js_sdk_through_tls(whisper: ServerProcess, raws: dict[str, Path], tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "assemblyai").exists():
        pytest.fail("node and tests/e2e/js/node_modules are needed: `make clients` installs them")
    proxy = TlsProxy(tmp_path, whisper.port)
    try:
        command = [node, str(JS / "streaming.mjs"), f"wss://127.0.0.1:{proxy.port}/v3/ws"]
        done = subprocess.run(
            [*command, KEY, str(raws["jfk.wav"])],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            env={"PATH": "/usr/bin:/bin", "NODE_EXTRA_CA_CERTS": str(proxy.cert)},
        )
    finally:
        proxy.stop()
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["errors"] == [] and result["messages"][0]["type"] == "Begin", result
    turns = [m for m in result["messages"] if m.get("end_of_turn") and m["turn_is_formatted"]]
    said = " ".join(t["transcript"] for t in turns)
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.15, said
    assert result["close_code"] in (None, 1000, 1005), result


# Bad input: a plain WebSocket.


async def _session(url: str, sends: list[str | bytes]) -> tuple[list[dict[str, Any]], int | None]:
    got: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers={"Authorization": KEY}) as ws:
        try:
            for item in sends:
                await ws.send(item)
            async for message in ws:
                got.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass  # the server closed with its code, after its Error
        return got, ws.close_code


@pytest.mark.parametrize(
    ("query", "sends", "code", "needle"),
    [
        ("encoding=opus", [], 3006, "opus"),
        ("sample_rate=0", [], 3006, "sample_rate"),
        ("sample_rate=16000", [bytes(320), bytes(3200)], 3007, "too short"),
        ("sample_rate=16000", [bytes(64000)], 3007, "too long"),
        ("sample_rate=16000", [bytes(3200), "{not json"], 3006, "JSON"),
        ("sample_rate=16000", [bytes(3200), '{"type": "Reconfigure"}'], 3006, "Reconfigure"),
        ("inactivity_timeout=4", [], 3006, "inactivity_timeout"),
    ],
)
def test_bad_input_gets_its_error_and_close_code(
    whisper: ServerProcess, query: str, sends: list[str | bytes], code: int, needle: str
) -> None:
    url = f"ws://127.0.0.1:{whisper.port}/v3/ws?{query}"
    got, close = asyncio.run(_session(url, sends))
    assert got[-1]["type"] == "Error" and got[-1]["error_code"] == code, got
    assert needle in got[-1]["error"] and close == code
    assert not [m for m in got if m["type"] == "Termination"]
    assert httpx.get(f"{whisper.http}/api/v1/health").status_code == 200


def test_inactivity_timeout_terminates_the_session_after_its_last_turn(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    """Speech, then no audio (KeepAlive only): after ``inactivity_timeout`` seconds the
    session ends as AssemblyAI terminates one: the open turn flushed, ``Termination``,
    close 1000."""
    pcm = raws["jfk.wav"].read_bytes()[: 32000 * 3]  # three seconds of speech
    chunks: list[str | bytes] = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    url = f"ws://127.0.0.1:{whisper.port}/v3/ws?sample_rate=16000&inactivity_timeout=5"
    got, close = asyncio.run(_session(url, [*chunks, '{"type": "KeepAlive"}']))
    assert got[-1]["type"] == "Termination" and close == 1000, got
    assert got[-1]["audio_duration_seconds"] == 3
    ends = [m for m in got if m["type"] == "Turn" and m["end_of_turn"]]
    assert "americans" in " ".join(m["transcript"] for m in ends), got
    assert not [m for m in got if m["type"] == "Error"]


@pytest.mark.parametrize(
    ("query", "update"),
    [
        ("", None),
        ("&min_turn_silence=2500", None),
        ("&min_end_of_turn_silence_when_confident=2500", None),
        ("", {"type": "UpdateConfiguration", "min_turn_silence": 2500}),
    ],
)
def test_min_turn_silence_holds_the_models_end_until_the_pause_is_that_long(
    whisper: ServerProcess, raws: dict[str, Path], query: str, update: dict[str, Any] | None
) -> None:
    """Four sentences with pauses of under a second between them, then 3 s of silence:
    the model ends a turn at the pauses, unless ``min_turn_silence`` (here longer than any
    of them) holds its end until the final silence."""
    pcm = raws["harvard_16k.wav"].read_bytes() + bytes(32000 * 3)
    chunks: list[str | bytes] = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    if update is not None:
        chunks.insert(0, json.dumps(update))
    url = f"ws://127.0.0.1:{whisper.port}/v3/ws?sample_rate=16000&max_turn_silence=10000{query}"
    got, close = asyncio.run(_session(url, [*chunks, '{"type": "Terminate"}']))
    assert close == 1000, got
    ends = [m["transcript"] for m in got if m["type"] == "Turn" and m["end_of_turn"]]
    held = bool(query) or update is not None
    if held:
        assert len(ends) == 1 and "canoe" in ends[0] and "steady work" in ends[0], ends
    else:
        assert len(ends) >= 2 and "canoe" in ends[0] and "canoe" not in ends[-1], ends


def test_a_reused_token_and_a_wrong_key_are_401_before_the_upgrade(
    whisper: ServerProcess,
) -> None:
    token = mint(whisper).json()["token"]
    url = f"ws://127.0.0.1:{whisper.port}/v3/ws?sample_rate=16000"

    async def status(target: str, **kwargs: Any) -> int:
        try:
            async with websockets.connect(target, **kwargs) as ws:
                await ws.send('{"type": "Terminate"}')
                async for _ in ws:
                    pass
                return 101
        except websockets.InvalidStatus as error:
            return error.response.status_code

    assert asyncio.run(status(f"{url}&token={token}")) == 101
    assert asyncio.run(status(f"{url}&token={token}")) == 401
    assert asyncio.run(status(url, additional_headers={"Authorization": "aai-wrong"})) == 401
    assert asyncio.run(status(url)) == 401


def test_a_concurrent_session_limit_is_3009(tmp_path: Path) -> None:
    """A key with ``max_streams = 1`` gets 3009 for its second session (AssemblyAI's too
    many concurrent sessions), and so does anyone past the server's own stream limit."""
    keys = [
        {"key": "aai-key-one", "name": "one", "max_streams": 1},
        {"key": "aai-key-two", "name": "two"},
    ]
    server = start_server(  # the test model
        tmp_path,
        env={"STREAMER_AUTH__API_KEYS": json.dumps(keys), "STREAMER_SERVER__MAX_STREAMS": "2"},
    )
    url = f"ws://127.0.0.1:{server.port}/v3/ws?sample_rate=16000"

    async def second(first_key: str, second_key: str) -> tuple[list[dict[str, Any]], int | None]:
        async with websockets.connect(url, additional_headers={"Authorization": first_key}) as ws:
            assert json.loads(await ws.recv())["type"] == "Begin"
            extra = {"Authorization": second_key}
            got: list[dict[str, Any]] = []
            async with websockets.connect(url, additional_headers=extra) as refused:
                with contextlib.suppress(websockets.ConnectionClosed):  # after the Error
                    async for message in refused:
                        got.append(json.loads(message))
                return got, refused.close_code

    async def go() -> list[tuple[list[dict[str, Any]], int | None]]:
        results = [await second("aai-key-one", "aai-key-one")]  # the key's quota
        async with websockets.connect(
            url, additional_headers={"Authorization": "aai-key-two"}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "Begin"
            results.append(await second("aai-key-two", "aai-key-two"))  # the server's two streams
        return results

    try:
        (quota, full) = asyncio.run(go())
    finally:
        server.stop()
    for got, close in (quota, full):
        assert [m["type"] for m in got] == ["Error"] and close == 3009, got
        assert got[0]["error_code"] == 3009
    assert "one is at its quota of 1" in quota[0][0]["error"]
    assert "limit of 2 streams" in full[0][0]["error"]


def test_the_chunk_limits_are_settings(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, env={"STREAMER_ASSEMBLYAI__MAX_CHUNK_MS": "3000"}
    )  # the test model, no keys
    try:
        url = f"ws://127.0.0.1:{server.port}/v3/ws?sample_rate=16000"

        async def go() -> tuple[list[dict[str, Any]], int | None]:
            async with websockets.connect(url) as ws:
                await ws.send(bytes(64000))  # 2 s: within this server's 3000 ms
                await ws.send('{"type": "Terminate"}')
                got = [json.loads(m) async for m in ws]
                return got, ws.close_code

        got, close = asyncio.run(go())
    finally:
        server.stop()
    assert [m["type"] for m in got] == ["Begin", "Termination"] and close == 1000
    assert got[-1]["audio_duration_seconds"] == 2
