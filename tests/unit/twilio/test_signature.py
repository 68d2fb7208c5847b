"""Twilio's signature policy and the callback host check (the e2e test computes the
signature with the twilio package's own RequestValidator)."""

from __future__ import annotations

import pytest

from streamer.errors import ConnectionDenied
from streamer.policy import ConnectionRequest, Principal
from streamer.twilio.callbacks import host_allowed
from streamer.twilio.signature import SignaturePolicy, by_route, signature

TOKEN = "12345"


def request(url: str, headers: dict[str, str], route: str = "twilio") -> ConnectionRequest:
    return ConnectionRequest(route=route, transport="websocket", headers=headers, url=url)


def test_the_signature_of_a_form_post_and_of_a_websocket_url() -> None:
    # Both computed by the twilio package's RequestValidator (9.13.0), the reference.
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert signature(TOKEN, url, params) == "vNe7KK2kJwCsxc9K3OLkkKB3qqI="
    assert signature(TOKEN, "wss://voice.example.com/v1/twilio") == "LlXgETQBie/lEXbglT20RkzJTMk="


def test_a_valid_signature_is_let_in_with_or_without_the_default_port() -> None:
    policy = SignaturePolicy(TOKEN)
    url = "ws://voice.example.com/v1/twilio"
    assert policy(request(url, {"x-twilio-signature": signature(TOKEN, url)})).name == "twilio"
    with_port = "ws://voice.example.com:80/v1/twilio"
    assert policy(request(url, {"x-twilio-signature": signature(TOKEN, with_port)}))
    behind_tls = {"x-forwarded-proto": "https"}
    signed = signature(TOKEN, "wss://voice.example.com/v1/twilio")
    assert policy(request(url, {**behind_tls, "x-twilio-signature": signed}))
    public = SignaturePolicy(TOKEN, "wss://calls.example.org")
    signed = signature(TOKEN, "wss://calls.example.org/v1/twilio")
    assert public(request("ws://10.0.0.5:8080/v1/twilio", {"x-twilio-signature": signed}))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-twilio-signature": "bm9wZQ=="},
        {"x-twilio-signature": signature("other", "ws://h/v1/twilio")},
    ],
)
def test_a_missing_or_bad_signature_is_403(headers: dict[str, str]) -> None:
    with pytest.raises(ConnectionDenied) as denied:
        SignaturePolicy(TOKEN)(request("ws://h/v1/twilio", headers))
    assert denied.value.status == 403


def test_by_route_asks_the_route_s_policy_and_the_default_for_the_rest() -> None:
    def keys(r: ConnectionRequest) -> Principal:
        raise ConnectionDenied("key needed")

    policy = by_route({"twilio": SignaturePolicy(TOKEN)}, keys)
    url = "ws://h/v1/twilio"
    assert policy(request(url, {"x-twilio-signature": signature(TOKEN, url)})).name == "twilio"
    with pytest.raises(ConnectionDenied):
        policy(request(url, {"x-twilio-signature": signature(TOKEN, url)}, route="twilio_events"))


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/final", True),
        ("http://hooks.example.com:8080/final", True),
        ("http://calls.example.org:9000/x", True),
        ("http://calls.example.org:9001/x", False),
        ("http://evil.example.net/x", False),
        ("file:///etc/passwd", False),
        ("http://hooks.example.com.evil.net/", False),
        ("not a url", False),
    ],
)
def test_callbacks_go_only_to_allowed_hosts(url: str, ok: bool) -> None:
    assert host_allowed(url, ["hooks.example.com", "calls.example.org:9000"]) is ok
