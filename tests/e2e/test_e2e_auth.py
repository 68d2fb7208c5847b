"""API keys on a real server: each form a client sends them in, the 401 before the upgrade
for a wrong or missing key, on both transports, and no key in any log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import HOST, ServerProcess, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer.client import StreamFailed, load_audio, stream_file
from streamer.client.grpc import stream_file as grpc_stream_file
from streamer.protocol.proto import streamer_v1_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

KEY = "k-3f9a1c7e5b2d4068"
WRONG = "k-0000000000000000"
AUDIO_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "jfk.wav"
AUDIO = load_audio(AUDIO_PATH)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"STREAMER_AUTH__API_KEYS": json.dumps([KEY]), "STREAMER_LOG_LEVEL": "info"}
    server = start_server(tmp_path_factory.mktemp("keyed"), env=env, grpc=True)
    yield server
    server.stop()
    assert KEY not in server.output() and WRONG not in server.output()


async def refused(url: str, **options: object) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **options):  # type: ignore[arg-type]
            pass
    return info.value


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"additional_headers": {"Authorization": f"Token {WRONG}"}},
        {"additional_headers": {"Authorization": f"bearer {WRONG}"}},
        {"subprotocols": ["token", WRONG]},
    ],
    ids=["none", "wrong-token", "wrong-bearer", "wrong-subprotocol"],
)
async def test_a_missing_or_wrong_key_is_401_before_the_upgrade(
    keyed: ServerProcess, options: dict[str, object]
) -> None:
    error = await refused(keyed.ws("segmented"), **options)
    assert error.response.status_code == 401
    body = json.loads(error.response.body or b"{}")
    assert body["code"] == "unauthorized"
    assert WRONG not in body["message"]


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "token"])
async def test_the_key_in_the_authorization_header_opens_streams(
    keyed: ServerProcess, scheme: str
) -> None:
    headers = {"Authorization": f"{scheme} {KEY}"}
    async with connect(keyed.ws("simple"), additional_headers=headers) as ws:
        assert ws.subprotocol is None
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        assert json.loads(await ws.recv())["type"] == "ready"


@pytest.mark.parametrize("name", ["token", "bearer"])
async def test_a_browser_sends_the_key_as_a_subprotocol_and_gets_only_the_name_back(
    keyed: ServerProcess, name: str
) -> None:
    async with connect(keyed.ws("segmented"), subprotocols=[name, KEY]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == name
        assert KEY not in str(ws.response.headers)
        await ws.send(json.dumps({"request": "start", "format": AUDIO.format}))
        assert json.loads(await ws.recv())["type"] == "ready"


async def test_grpc_takes_the_key_as_metadata(keyed: ServerProcess) -> None:
    target = f"{HOST}:{keyed.grpc_port}"
    good = await grpc_stream_file(target, AUDIO, metadata=(("authorization", f"Bearer {KEY}"),))
    assert good.ok and good.segments
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.StreamerStub(channel).Simple(metadata=(("authorization", f"Token {WRONG}"),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_metrics_need_no_key(keyed: ServerProcess) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{keyed.http}/api/v1/health")).status_code == 200
        metrics = (await http.get(f"{keyed.http}/metrics")).text
    assert 'streamer_connections_refused_total{code="unauthorized",route="segmented"}' in metrics


async def test_the_client_library_and_cli_send_the_key(keyed: ServerProcess) -> None:
    for url in (keyed.ws("segmented"), keyed.grpc("segmented")):
        result = await stream_file(url, AUDIO, api_key=KEY)
        assert result.ok and result.segments, url
    with pytest.raises(StreamFailed, match="401"):
        await stream_file(keyed.ws("segmented"), AUDIO, api_key=WRONG)
    refused_call = await stream_file(keyed.grpc("segmented"), AUDIO, api_key=WRONG)
    assert [e["code"] for e in refused_call.errors] == ["unauthorized"], (
        refused_call.close_code,
        refused_call.close_reason,
    )
    assert refused_call.ready is None


def test_the_cli_sends_the_key_from_the_environment_or_its_option(keyed: ServerProcess) -> None:
    env = {**os.environ, "STREAMER_API_KEY": KEY}
    command = [sys.executable, "-m", "streamer.cli.main", "client", "-i", str(AUDIO_PATH)]
    command += ["--addr", keyed.ws("simple")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(
        [*command, "--api-key", WRONG], capture_output=True, text=True, env=env, timeout=60
    )
    assert refused.returncode == 1 and "401" in refused.stderr
