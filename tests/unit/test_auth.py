"""API keys as a connection policy: the forms clients send them in, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.auth import (
    ApiKey,
    AuthSettings,
    KeyPolicy,
    fingerprint,
    load_keys,
    policy_from_settings,
    presented,
)
from streamer.errors import ConnectionDenied
from streamer.policy import ConnectionRequest, allow_all

KEY = "s3cr3t-key-0001"
OTHER = "s3cr3t-key-0002"


def request(
    headers: dict[str, str] | None = None, subprotocols: tuple[str, ...] = ()
) -> ConnectionRequest:
    return ConnectionRequest("segmented", "websocket", headers or {}, {}, subprotocols)


@pytest.mark.parametrize("scheme", ["Token", "token", "TOKEN", "Bearer", "bearer"])
def test_the_authorization_header_carries_the_key_in_any_case(scheme: str) -> None:
    policy = KeyPolicy([ApiKey(key=KEY, name="team-a", max_streams=3)])
    principal = policy(request({"authorization": f"{scheme} {KEY}"}))
    assert (principal.name, principal.max_streams, principal.subprotocol) == ("team-a", 3, None)


@pytest.mark.parametrize("name", ["token", "bearer", "Token"])
def test_a_browser_sends_the_key_as_a_subprotocol_pair_and_gets_the_name_back(name: str) -> None:
    principal = KeyPolicy([ApiKey(key=KEY)])(request(subprotocols=(name, KEY)))
    assert principal.subprotocol == name  # the server selects it; the key is not echoed
    assert principal.name == fingerprint(KEY) and KEY not in principal.name


@pytest.mark.parametrize(
    ("headers", "subprotocols", "needle"),
    [
        ({}, (), "required"),
        ({"authorization": f"Basic {KEY}"}, (), "required"),
        ({"authorization": "Token"}, (), "required"),
        ({"authorization": f"Token {OTHER}"}, (), "not valid"),
        ({}, ("token",), "required"),
        ({}, ("token", OTHER), "not valid"),
        ({}, (KEY, "token"), "required"),
    ],
)
def test_a_missing_or_wrong_key_is_401(
    headers: dict[str, str], subprotocols: tuple[str, ...], needle: str
) -> None:
    with pytest.raises(ConnectionDenied) as info:
        KeyPolicy([ApiKey(key=KEY)])(request(headers, subprotocols))
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert needle in info.value.message and KEY not in info.value.message


def test_keys_come_from_settings_and_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\n{OTHER}  # ops\n\n")
    settings = AuthSettings(api_keys=[KEY, ApiKey(key="named-key-9", name="n")], api_keys_file=keys)
    assert [k.key for k in load_keys(settings)] == [KEY, "named-key-9", OTHER]
    policy = policy_from_settings(settings)
    assert policy(request({"authorization": f"Bearer {OTHER}"})).name == fingerprint(OTHER)


def test_no_keys_lets_everyone_in() -> None:
    assert policy_from_settings(AuthSettings()) is allow_all


def test_the_header_wins_over_subprotocols() -> None:
    credential = presented(request({"authorization": f"Token {KEY}"}, ("token", OTHER)))
    assert credential is not None and credential.secret == KEY and credential.subprotocol is None


def test_openai_realtime_browsers_send_the_key_in_a_prefixed_subprotocol() -> None:
    offered = ("realtime", f"openai-insecure-api-key.{KEY}")
    principal = KeyPolicy([ApiKey(key=KEY)])(request(subprotocols=offered))
    assert principal.subprotocol == "realtime"
    with pytest.raises(ConnectionDenied):
        KeyPolicy([ApiKey(key=KEY)])(request(subprotocols=("realtime", "openai-insecure-api-key.")))


@pytest.mark.parametrize("route", ["assemblyai", "assemblyai_token"])
def test_assemblyais_routes_take_the_bare_key_as_the_whole_header(route: str) -> None:
    policy = KeyPolicy([ApiKey(key=KEY, name="team-a")])
    bare = ConnectionRequest(route, "websocket", {"authorization": KEY})
    assert policy(bare).name == "team-a"
    assert policy(ConnectionRequest(route, "websocket", {"authorization": f"Token {KEY}"}))
    with pytest.raises(ConnectionDenied, match="not valid"):
        policy(ConnectionRequest(route, "websocket", {"authorization": OTHER}))


def test_other_routes_do_not_take_a_bare_key() -> None:
    with pytest.raises(ConnectionDenied, match="required"):
        KeyPolicy([ApiKey(key=KEY)])(request({"authorization": KEY}))
