"""Short-lived tokens: what a browser presents instead of an API key.

A web app's backend holds an API key and asks ``POST /api/v1/auth/grant`` for a token; the
page it serves connects with that token (``?token=`` or the subprotocol pair ``token``,
``<token>``). A token is a JWT signed with HS256 under ``[auth] token_secret`` (PyJWT does
the cryptography). Its claims:

- ``sub``: the name of the key it was minted from (its quota is counted under that name);
- ``aud``: the routes it may open (``*``: any);
- ``iat`` / ``exp``: when it was minted and when it stops being accepted;
- ``jti``: its id; ``max_streams``: its own stream quota, never above the key's;
- ``single_use``: accepted once; a second connection with it is refused as a replay.

A token is checked when the connection opens; a stream that outlives the token goes on.
The replay guard is in memory, per server process.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from streamer.errors import ConnectionDenied
from streamer.policy import Principal

ALGORITHM: Final = "HS256"
ANY_ROUTE: Final = "*"
"""The audience of a token that may open any route."""

_JWT: Final = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

Clock = Callable[[], float]


def looks_like_token(secret: str) -> bool:
    """Whether a presented credential has a JWT's shape (three base64url parts, a JSON
    header); API keys of that shape are refused when they are loaded."""
    return bool(_JWT.match(secret))


@dataclass(frozen=True, slots=True)
class Grant:
    """A minted token and what it allows."""

    token: str
    expires_at: float
    """Unix seconds."""
    routes: tuple[str, ...]
    max_streams: int | None
    single_use: bool
    token_id: str


class ReplayGuard:
    """Remembers the ids of single-use tokens already accepted, until they expire."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def first_use(self, token_id: str, expires_at: float, now: float) -> bool:
        """True the first time ``token_id`` is presented; False on every later time."""
        if len(self._seen) > 1024:  # forget the expired ones now and then
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        if token_id in self._seen:
            return False
        self._seen[token_id] = expires_at
        return True


class TokenIssuer:
    """Mints and checks tokens under one secret."""

    def __init__(
        self,
        secret: str,
        *,
        default_ttl: float = 30.0,
        max_ttl: float = 300.0,
        leeway: float = 0.0,
        clock: Clock = time.time,
    ) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("a token secret needs at least 32 bytes (HS256)")
        if not 0 < default_ttl <= max_ttl:
            raise ValueError("the default token TTL must be positive and at most the maximum")
        self._secret = secret
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._leeway = leeway
        self._clock = clock
        self._replays = ReplayGuard()

    def mint(
        self,
        subject: str,
        *,
        ttl: float | None = None,
        routes: Iterable[str] = (),
        max_streams: int | None = None,
        key_max_streams: int | None = None,
        single_use: bool = False,
    ) -> Grant:
        """A token for ``subject``; its quota is the lower of ``max_streams`` and the key's.

        Raises ``ValueError`` for a TTL that is not positive or past the maximum.
        """
        ttl = self.default_ttl if ttl is None else ttl
        if not 0 < ttl <= self.max_ttl:
            raise ValueError(f"ttl_seconds must be above 0 and at most {self.max_ttl:g}")
        audience = tuple(dict.fromkeys(routes)) or (ANY_ROUTE,)
        limits = [n for n in (max_streams, key_max_streams) if n is not None]
        quota = min(limits) if limits else None
        now = self._clock()
        expires = now + ttl
        claims: dict[str, Any] = {
            "sub": subject,
            "aud": list(audience),
            "iat": int(now),
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        if quota is not None:
            claims["max_streams"] = quota
        if single_use:
            claims["single_use"] = True
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return Grant(token, expires, audience, quota, single_use, claims["jti"])

    def verify(self, token: str, route: str) -> Mapping[str, Any]:
        """The claims of a token valid now for ``route``, or ``ConnectionDenied`` (401)."""
        now = self._clock()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=[route, ANY_ROUTE],
                leeway=self._leeway,
                # The expiry is checked below, against this issuer's clock.
                options={
                    "require": ["exp", "aud", "sub", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise ConnectionDenied(f"the token is not valid for the route {route}") from None
        except jwt.InvalidSignatureError:
            raise ConnectionDenied("the token's signature is not valid") from None
        except jwt.PyJWTError:
            raise ConnectionDenied("the token is not valid") from None
        if not isinstance(claims["exp"], int | float) or claims["exp"] + self._leeway <= now:
            raise ConnectionDenied("the token has expired; ask for a new one")
        if claims.get("single_use") and not self._replays.first_use(
            str(claims["jti"]), float(claims["exp"]), now
        ):
            raise ConnectionDenied("the token was for one connection and has been used")
        return claims

    def principal(
        self, token: str, route: str, subprotocol: str | None, key_max_streams: int | None
    ) -> Principal:
        """The principal a valid token acts for: its key's name and quota, and its own quota
        (an account of its own, so that one token cannot take all of its key's streams)."""
        claims = self.verify(token, route)
        token_id = str(claims["jti"])
        quota = claims.get("max_streams")
        return Principal(
            name=str(claims["sub"]),
            max_streams=key_max_streams,
            subprotocol=subprotocol,
            claims={"token_id": token_id, "expires_at": float(claims["exp"])},
            quotas=((f"token {token_id[:8]}", int(quota)),) if isinstance(quota, int) else (),
        )
