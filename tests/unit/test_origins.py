"""The origin allowlist: exact scheme, host and port; the server's own page; no Origin."""

from __future__ import annotations

import pytest

from streamer.config import ServerSettings
from streamer.errors import ConnectionDenied
from streamer.origins import OriginPolicy, parse_origin
from streamer.policy import ConnectionRequest, Principal

APP = "https://app.example.com"
INNER = Principal(name="inner")


def inner(request: ConnectionRequest) -> Principal:
    return INNER


def request(origin: str | None, host: str = "stt.internal:8080") -> ConnectionRequest:
    headers = {"host": host}
    if origin is not None:
        headers["origin"] = origin
    return ConnectionRequest("segmented", "websocket", headers)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (APP, True),
        ("HTTPS://App.Example.com", True),
        ("https://app.example.com:443", True),
        (None, True),
        ("http://stt.internal:8080", True),  # the server's own page
        ("https://evil.example", False),
        ("https://app.example.com.evil.example", False),
        ("https://evil-app.example.com", False),
        ("https://sub.app.example.com", False),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("null", False),
        ("file://", False),
        ("https://app.example.com/path", False),
        ("http://stt.internal:8081", False),
    ],
)
def test_only_exact_origins_and_the_own_page_are_let_in(origin: str | None, allowed: bool) -> None:
    policy = OriginPolicy(inner, [APP])
    if allowed:
        assert policy(request(origin)) is INNER
    else:
        with pytest.raises(ConnectionDenied) as denied:
            policy(request(origin))
        assert denied.value.status == 403 and str(denied.value.code) == "forbidden"


def test_a_missing_origin_can_be_refused() -> None:
    with pytest.raises(ConnectionDenied, match="without an Origin") as denied:
        OriginPolicy(inner, [APP], allow_missing=False)(request(None))
    assert denied.value.status == 403


def test_a_star_lets_every_origin_in_and_the_inner_policy_still_decides() -> None:
    def refuse(request: ConnectionRequest) -> Principal:
        raise ConnectionDenied("no key")

    assert OriginPolicy(inner, ["*"])(request("https://evil.example")) is INNER
    with pytest.raises(ConnectionDenied) as denied:
        OriginPolicy(refuse, [APP])(request(APP))
    assert denied.value.status == 401


def test_default_ports_are_the_scheme_s() -> None:
    assert parse_origin("https://a.example") == ("https", "a.example", 443)
    assert parse_origin("http://a.example") == ("http", "a.example", 80)
    own = OriginPolicy(inner)
    assert own(request("https://stt.example", host="stt.example")) is INNER
    with pytest.raises(ConnectionDenied):
        own(request("https://stt.example:8443", host="stt.example"))


def test_the_settings_refuse_what_is_not_an_origin() -> None:
    assert ServerSettings(allowed_origins=[APP, "*"]).allowed_origins == [APP, "*"]
    for bad in ("app.example.com", "wss://x.example", "https://x.example/app"):
        with pytest.raises(ValueError, match="not an origin"):
            ServerSettings(allowed_origins=[bad])
