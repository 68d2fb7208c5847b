"""Short-lived tokens, the origin allowlist and per-key quotas on a real server: each case
with its documented status, and no token or key in any log line."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import HOST, ServerProcess, start_server
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.client import load_audio, stream_file
from streamer.client.grpc import stream_file as grpc_stream_file

pytestmark = pytest.mark.e2e

KEY = "k-tokens-5e8d1a0c"
OTHER = "k-tokens-other-93b2"
SECRET = "e2e-token-secret-abcdefghijklmnopqrstuvwxyz"
APP = "https://app.example.com"
AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
JFK = load_audio(AUDIO / "jfk.wav")
START = json.dumps({"request": "start", "format": JFK.format})

secrets_seen: list[str] = [KEY, OTHER]
"""Every key and token the tests send: none may appear in the server's log."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    keys = [{"key": KEY, "name": "web-app", "max_streams": 2}, {"key": OTHER, "name": "other"}]
    env = {
        "STREAMER_AUTH__API_KEYS": json.dumps(keys),
        "STREAMER_AUTH__TOKEN_SECRET": SECRET,
        "STREAMER_SERVER__ALLOWED_ORIGINS": json.dumps([APP]),
        "STREAMER_LOG_LEVEL": "info",
    }
    running = start_server(tmp_path_factory.mktemp("tokens"), env=env, grpc=True)
    yield running
    running.stop()
    log = running.output()
    assert "POST /api/v1/auth/grant" in log  # the log has the requests, not their secrets
    leaked = [s[:12] for s in secrets_seen if s in log]
    assert not leaked, leaked


def grant(server: ServerProcess, key: str = KEY, **body: object) -> httpx.Response:
    response = httpx.post(
        f"{server.http}/api/v1/auth/grant",
        headers={"Authorization": f"Token {key}"},
        json=body,
        timeout=10,
    )
    if response.status_code == 200:
        secrets_seen.append(response.json()["token"])
    return response


def token(server: ServerProcess, **body: object) -> str:
    response = grant(server, **body)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def forged(secret: str = SECRET, *, exp: float | None = None, aud: str = "*") -> str:
    """A token made outside the server: with another secret, or already expired."""
    claims = {
        "sub": "web-app",
        "aud": [aud],
        "exp": exp if exp is not None else time.time() + 60,
        "jti": uuid.uuid4().hex,
    }
    made = jwt.encode(claims, secret, algorithm="HS256")
    secrets_seen.append(made)
    return made


async def status_of(url: str, **options: Any) -> int:
    """101 when the upgrade is accepted (and a stream starts), else the HTTP status."""
    try:
        async with connect(url, **options) as ws:
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "ready"
            return 101
    except InvalidStatus as refused:
        body = json.loads(refused.response.body or b"{}")
        assert not any(s in body.get("message", "") for s in secrets_seen)
        return refused.response.status_code


async def test_the_grant_mints_a_token_with_what_was_asked(server: ServerProcess) -> None:
    response = grant(server, ttl_seconds=10, routes=["segmented"], max_streams=5)
    assert response.status_code == 200
    body = response.json()
    assert body["routes"] == ["segmented"] and body["max_streams"] == 2  # the key's quota
    assert response.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in response.headers
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="segmented")
    assert 9 <= claims["exp"] - time.time() <= 10.5


@pytest.mark.parametrize(
    ("key", "body", "status"),
    [
        (WRONG := "k-not-a-key-000", {}, 401),
        (KEY, {"ttl_seconds": 100000}, 400),
        (KEY, {"routes": ["nowhere"]}, 400),
        (KEY, {"max_streams": 0}, 400),
        (KEY, {"single_use": "yes"}, 400),
    ],
    ids=["wrong-key", "ttl-too-long", "unknown-route", "no-streams", "not-a-bool"],
)
async def test_a_bad_grant_is_refused_with_its_status(
    server: ServerProcess, key: str, body: dict[str, object], status: int
) -> None:
    response = grant(server, key, **body)
    assert response.status_code == status, response.text
    assert response.json()["code"] in ("unauthorized", "invalid_message")


async def test_a_token_cannot_mint_tokens(server: ServerProcess) -> None:
    assert grant(server, token(server)).status_code in (401, 403)


async def test_the_auth_matrix(server: ServerProcess) -> None:
    ws = server.ws("segmented")
    once = token(server, single_use=True)
    cases: dict[str, tuple[int, str, dict[str, Any]]] = {
        "no token": (401, ws, {}),
        "expired": (401, ws, {"subprotocols": ["token", forged(exp=time.time() - 5)]}),
        "wrong audience": (401, ws, {"subprotocols": ["token", token(server, routes=["simple"])]}),
        "bad signature": (401, ws, {"subprotocols": ["token", forged("x" * 40)]}),
        "single use, first": (101, ws, {"subprotocols": ["token", once]}),
        "single use, replayed": (401, ws, {"subprotocols": ["token", once]}),
        "valid in query": (101, f"{ws}?token={token(server)}", {}),
        "valid in subprotocol": (101, ws, {"subprotocols": ["token", token(server)]}),
        "API key in header": (101, ws, {"additional_headers": {"Authorization": f"Token {KEY}"}}),
        "API key in query": (401, f"{ws}?token={KEY}", {}),
    }
    seen = {name: await status_of(url, **options) for name, (_, url, options) in cases.items()}
    assert seen == {name: case[0] for name, case in cases.items()}


async def test_the_token_subprotocol_is_accepted_by_name_and_never_echoed(
    server: ServerProcess,
) -> None:
    minted = token(server)
    async with connect(server.ws("segmented"), subprotocols=["token", minted]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "token"
        assert minted not in str(ws.response.headers)


async def test_grpc_takes_a_token_as_metadata(server: ServerProcess) -> None:
    minted = token(server, routes=["simple"])
    result = await grpc_stream_file(
        f"{HOST}:{server.grpc_port}", JFK, metadata=(("authorization", f"Bearer {minted}"),)
    )
    assert result.ok and result.segments


async def test_a_token_that_expires_mid_stream_does_not_cut_it(server: ServerProcess) -> None:
    minted = token(server, ttl_seconds=1)
    audio = load_audio(AUDIO / "front_center_48k.wav")  # 1.4 s, sent in real time
    result = await stream_file(
        f"{server.ws('segmented')}?token={minted}", audio, real_time=True, api_key=None
    )
    assert result.ok and result.done is not None, result.errors
    assert [s for s in result.segments if s["is_final"]]
    assert await status_of(server.ws("segmented"), subprotocols=["token", minted]) == 401


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (APP, 101),
        (None, 101),
        ("https://evil.example", 403),
        ("https://app.example.com.evil.example", 403),
        ("http://app.example.com", 403),
        ("https://app.example.com:8443", 403),
        ("null", 403),
    ],
    ids=["allowed", "missing", "evil", "look-alike", "other-scheme", "other-port", "opaque"],
)
async def test_the_origin_allowlist(server: ServerProcess, origin: str | None, status: int) -> None:
    headers = {"Authorization": f"Token {OTHER}"}
    options: dict[str, Any] = {"additional_headers": headers}
    if origin is not None:
        options["origin"] = origin
    assert await status_of(server.ws("segmented"), **options) == status


async def test_the_server_s_own_page_is_always_allowed(server: ServerProcess) -> None:
    options = {"origin": server.http, "subprotocols": ["token", token(server)]}
    assert await status_of(server.ws("segmented"), **options) == 101


async def test_a_refused_origin_opens_no_stream(server: ServerProcess) -> None:
    async with httpx.AsyncClient() as http:
        before = (await http.get(f"{server.http}/metrics")).text
        assert await status_of(server.ws("simple"), origin="https://evil.example") == 403
        after = (await http.get(f"{server.http}/metrics")).text
    refused = 'streamer_connections_refused_total{code="forbidden",route="simple"}'
    assert refused in after
    started = [line for line in after.splitlines() if line.startswith("streamer_streams_started")]
    assert started == [line for line in before.splitlines() if line in started]


async def opened(url: str, **options: Any) -> ClientConnection:
    ws = await connect(url, **options)
    await ws.send(START)
    return ws


async def test_a_key_past_its_quota_is_overloaded_and_others_are_not(
    server: ServerProcess,
) -> None:
    ws = server.ws("segmented")
    mine = {"additional_headers": {"Authorization": f"Token {KEY}"}}
    first = await opened(ws, **mine)
    # A token minted from the key counts against the key's quota too.
    second = await opened(ws, subprotocols=["token", token(server)])
    try:
        for held in (first, second):
            assert json.loads(await held.recv())["type"] == "ready"
        third = await opened(ws, **mine)
        error = json.loads(await third.recv())
        assert error["type"] == "error" and error["code"] == "overloaded"
        assert "web-app" in error["message"] and "quota of 2" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(third.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # Another key is not affected.
        assert await status_of(ws, additional_headers={"Authorization": f"Token {OTHER}"}) == 101
    finally:
        await first.close()
        await second.close()
    # Ended streams give their place back.
    assert await status_of(ws, **mine) == 101


async def test_a_token_s_own_quota_is_its_own(server: ServerProcess) -> None:
    minted = token(server, max_streams=1, routes=["segmented"])
    ws = server.ws("segmented")
    first = await opened(ws, subprotocols=["token", minted])
    try:
        assert json.loads(await first.recv())["type"] == "ready"
        second = await opened(ws, subprotocols=["token", minted])
        error = json.loads(await second.recv())
        assert error["code"] == "overloaded" and "quota of 1" in error["message"]
        await second.close()
    finally:
        await first.close()
