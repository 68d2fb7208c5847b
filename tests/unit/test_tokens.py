"""Short-lived tokens: minting, every way a token is refused, replay, and the key policy
that takes keys and tokens alike (a JWT is told apart by its shape)."""

from __future__ import annotations

import jwt
import pytest

from streamer.auth import ApiKey, AuthSettings, KeyPolicy, issuer_from_settings
from streamer.errors import ConnectionDenied
from streamer.observability.logging import redact
from streamer.policy import ConnectionRequest
from streamer.testing import ManualClock
from streamer.tokens import TokenIssuer, looks_like_token

SECRET = "unit-test-secret-0123456789abcdefghij"
KEY = ApiKey(key="unit-key-000001", name="web-app", max_streams=3)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
def issuer(clock: ManualClock) -> TokenIssuer:
    return TokenIssuer(SECRET, default_ttl=30, max_ttl=300, clock=clock)


def ws(
    route: str = "segmented",
    *,
    subprotocols: tuple[str, ...] = (),
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> ConnectionRequest:
    return ConnectionRequest(route, "websocket", headers or {}, query or {}, subprotocols)


def test_a_token_carries_its_subject_audience_expiry_id_and_quota(issuer: TokenIssuer) -> None:
    grant = issuer.mint("web-app", routes=["segmented"], max_streams=5, key_max_streams=3)
    claims = jwt.decode(
        grant.token,
        SECRET,
        algorithms=["HS256"],
        audience="segmented",
        options={"verify_exp": False},
    )
    assert claims["sub"] == "web-app" and claims["aud"] == ["segmented"]
    assert claims["exp"] == pytest.approx(1_000_030.0) and len(claims["jti"]) == 32
    assert claims["max_streams"] == grant.max_streams == 3  # never above the key's
    assert looks_like_token(grant.token) and not looks_like_token(KEY.key)


@pytest.mark.parametrize("ttl", [0, -1, 301])
def test_a_ttl_out_of_bounds_is_refused(issuer: TokenIssuer, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        issuer.mint("web-app", ttl=ttl)


def test_a_token_is_refused_once_expired(issuer: TokenIssuer, clock: ManualClock) -> None:
    grant = issuer.mint("web-app", ttl=10)
    clock.now += 9.9
    assert issuer.verify(grant.token, "simple")["sub"] == "web-app"
    clock.now += 0.2
    with pytest.raises(ConnectionDenied, match="expired") as denied:
        issuer.verify(grant.token, "simple")
    assert denied.value.status == 401


def test_a_token_opens_only_the_routes_it_names(issuer: TokenIssuer) -> None:
    grant = issuer.mint("web-app", routes=["simple"])
    issuer.verify(grant.token, "simple")
    with pytest.raises(ConnectionDenied, match="not valid for the route segmented"):
        issuer.verify(grant.token, "segmented")


def test_a_token_signed_with_another_secret_or_tampered_is_refused(issuer: TokenIssuer) -> None:
    other = TokenIssuer("another-secret-0123456789abcdefghijkl", clock=issuer._clock)
    with pytest.raises(ConnectionDenied, match="signature"):
        issuer.verify(other.mint("web-app").token, "simple")
    head, body, signature = issuer.mint("web-app").token.split(".")
    with pytest.raises(ConnectionDenied):
        issuer.verify(f"{head}.{body}x.{signature}", "simple")
    unsigned = jwt.encode({"sub": "x", "aud": ["*"], "exp": 2e9, "jti": "1"}, None, "none")
    with pytest.raises(ConnectionDenied):
        issuer.verify(unsigned, "simple")


def test_a_single_use_token_is_refused_the_second_time(issuer: TokenIssuer) -> None:
    once = issuer.mint("web-app", single_use=True)
    issuer.verify(once.token, "simple")
    with pytest.raises(ConnectionDenied, match="used"):
        issuer.verify(once.token, "simple")
    many = issuer.mint("web-app")
    for _ in range(3):
        issuer.verify(many.token, "simple")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenIssuer("short")
    with pytest.raises(ValueError):
        AuthSettings(token_secret="short")  # type: ignore[arg-type]


def policy(issuer: TokenIssuer) -> KeyPolicy:
    return KeyPolicy([KEY], issuer)


def test_the_key_policy_takes_a_token_in_the_subprotocol_or_the_query(issuer: TokenIssuer) -> None:
    grant = issuer.mint("web-app", max_streams=1)
    by_subprotocol = policy(issuer)(ws(subprotocols=("token", grant.token)))
    assert by_subprotocol.subprotocol == "token" and by_subprotocol.name == "web-app"
    assert by_subprotocol.max_streams == 3  # the key's quota holds for its tokens
    assert by_subprotocol.accounts() == (("web-app", 3), (f"token {grant.token_id[:8]}", 1))
    by_query = policy(issuer)(ws(query={"token": grant.token}))
    assert by_query.subprotocol is None and by_query.claims["token_id"] == grant.token_id


def test_a_key_in_the_query_or_a_token_without_tokens_is_refused(issuer: TokenIssuer) -> None:
    with pytest.raises(ConnectionDenied, match="URL"):
        policy(issuer)(ws(query={"token": KEY.key}))
    with pytest.raises(ConnectionDenied, match="no tokens"):
        KeyPolicy([KEY])(ws(subprotocols=("token", issuer.mint("web-app").token)))


def test_a_token_of_a_key_no_longer_configured_is_refused(issuer: TokenIssuer) -> None:
    with pytest.raises(ConnectionDenied, match="no longer valid"):
        policy(issuer)(ws(subprotocols=("token", issuer.mint("gone").token)))


def test_an_api_key_may_not_look_like_a_token(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="JWT"):
        ApiKey(key=issuer.mint("web-app").token)


def test_tokens_are_off_without_a_secret() -> None:
    assert issuer_from_settings(AuthSettings()) is None
    made = issuer_from_settings(AuthSettings(token_secret=SECRET, token_ttl_seconds=5))  # type: ignore[arg-type]
    assert made is not None and made.default_ttl == 5


def test_tokens_are_redacted_wherever_they_appear_in_a_log_line(issuer: TokenIssuer) -> None:
    token = issuer.mint("web-app").token
    for line in (
        f'"WebSocket /api/v1/segmented?token={token}" [accepted]',
        f"GET /?autostart=1&route=segmented&token={token}&x=1",
        f"offered subprotocols token, {token}",
    ):
        assert token not in redact(line)
        assert token.split(".")[2] not in redact(line)
