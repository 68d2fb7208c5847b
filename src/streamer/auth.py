"""API keys: the connection policy that a server with ``[auth] api_keys`` runs.

A client presents a key the ways the clients people use send one:

- the header ``Authorization: Token <key>`` or ``Authorization: Bearer <key>`` (the scheme in
  any case), on a WebSocket upgrade or as gRPC metadata;
- in a browser, which cannot set headers on a WebSocket, the subprotocol pair
  ``Sec-WebSocket-Protocol: token, <key>`` (or ``bearer, <key>``): the server accepts the
  connection with ``token`` (or ``bearer``) as its subprotocol and never echoes the key;
- OpenAI Realtime's browser form, the subprotocols ``realtime`` and
  ``openai-insecure-api-key.<key>``: accepted with ``realtime``;
- on AssemblyAI's routes (``BARE_KEY_ROUTES``), the bare header ``Authorization: <key>``
  (or a token), with no scheme, as AssemblyAI's clients send it.

A browser may instead present a short-lived token minted from a key
(``streamer.tokens``): the same subprotocol pair, or ``?token=<token>`` in the URL. A
credential with a JWT's shape is checked as a token, anything else as a key; the URL carries
tokens only, never keys.

A missing or wrong key (or an expired, replayed or foreign token) is HTTP 401 before the
upgrade (gRPC: UNAUTHENTICATED). Keys are compared in constant time and never logged: a
principal is named by the key's ``name`` or a short hash of it. With no keys configured,
every connection is let in (and the server warns at start).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from streamer.errors import ConnectionDenied
from streamer.policy import ConnectionPolicy, ConnectionRequest, Principal, allow_all
from streamer.tokens import TokenIssuer, looks_like_token

SCHEMES = ("token", "bearer")
"""Authorization schemes (and subprotocol names) that carry a key."""
REALTIME_SUBPROTOCOL = "realtime"
REALTIME_KEY_PREFIX = "openai-insecure-api-key."
"""OpenAI Realtime's browser subprotocols: ``realtime`` and this prefix before the key."""
BARE_KEY_ROUTES = frozenset(("assemblyai", "assemblyai_token"))
"""Routes whose clients send the key (or token) as the whole Authorization header."""


class ApiKey(BaseModel):
    """A key with a name (for logs and metrics) and, optionally, a stream quota."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=8, description="The secret itself; at least 8 characters.")
    name: str | None = None
    max_streams: int | None = Field(
        default=None, ge=1, description="Concurrent streams of this key (and its tokens)."
    )

    @field_validator("key")
    @classmethod
    def _not_a_token(cls, key: str) -> str:
        if looks_like_token(key):
            raise ValueError("an API key may not have a JWT's shape (eyJ….….…)")
        return key


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str | ApiKey] = Field(
        default_factory=list,
        description="Keys that may connect: strings, or tables with key, name, max_streams.",
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of more keys, one a line ('#' starts a comment)."
    )
    token_secret: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Signs short-lived tokens (HS256); unset, no tokens are minted or accepted.",
    )
    token_ttl_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="A token's lifetime unless the grant asks."
    )
    token_max_ttl_seconds: float = Field(
        default=300.0, gt=0, le=86400, description="The longest lifetime a grant may ask for."
    )


@dataclass(frozen=True, slots=True)
class Credential:
    """A key as the client presented it, and the subprotocol that carried it, if any."""

    secret: str
    subprotocol: str | None = None
    in_query: bool = False
    """It came as ``?token=`` in the URL."""


def presented(request: ConnectionRequest) -> Credential | None:
    """The key a connection presents: the Authorization header, else a subprotocol pair,
    else (a token) the query parameter ``token``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in SCHEMES and value.strip():
        return Credential(value.strip())
    if request.route in BARE_KEY_ROUTES and scheme and not value.strip():
        return Credential(scheme)
    offered = [p.strip() for p in request.subprotocols]
    for name, secret in itertools.pairwise(offered):
        if name.lower() in SCHEMES and secret:
            return Credential(secret, subprotocol=name)
    if REALTIME_SUBPROTOCOL in offered:
        for name in offered:
            secret = name.removeprefix(REALTIME_KEY_PREFIX)
            if name.startswith(REALTIME_KEY_PREFIX) and secret:
                return Credential(secret, subprotocol=REALTIME_SUBPROTOCOL)
    if token := request.query.get("token", "").strip():
        return Credential(token, in_query=True)
    return None


def fingerprint(secret: str) -> str:
    """A name for a key that does not give it away."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def load_keys(settings: AuthSettings) -> list[ApiKey]:
    """Every configured key: the settings' own, then the file's."""
    keys = [k if isinstance(k, ApiKey) else ApiKey(key=k) for k in settings.api_keys]
    if settings.api_keys_file is not None:
        for line in settings.api_keys_file.read_text().splitlines():
            secret = line.split("#", 1)[0].strip()
            if secret:
                keys.append(ApiKey(key=secret))
    return keys


class KeyPolicy:
    """Lets in connections that present one of ``keys``, or a valid token of ``tokens``
    minted from one of them."""

    def __init__(self, keys: Iterable[ApiKey], tokens: TokenIssuer | None = None) -> None:
        self._keys: Sequence[ApiKey] = tuple(keys)
        if not self._keys:
            raise ValueError("a key policy needs at least one key")
        self._by_name = {self.name_of(key): key for key in self._keys}
        self.tokens = tokens

    @staticmethod
    def name_of(key: ApiKey) -> str:
        """The principal name of a key: its own name, or a short hash of the secret."""
        return key.name or fingerprint(key.key)

    def find(self, secret: str) -> ApiKey | None:
        """The configured key equal to ``secret`` (compared in constant time), or None."""
        found = None
        given = secret.encode()
        for key in self._keys:  # every key is compared, so timing says nothing
            if hmac.compare_digest(key.key.encode(), given):
                found = key
        return found

    def __call__(self, request: ConnectionRequest) -> Principal:
        credential = presented(request)
        if credential is None:
            raise ConnectionDenied(
                "an API key is required: send 'Authorization: Token <key>' (or Bearer), "
                "or the subprotocols 'token', '<key>'"
            )
        if looks_like_token(credential.secret):
            return self._token(credential, request.route)
        if credential.in_query:
            raise ConnectionDenied(
                "an API key does not belong in the URL: send it in the Authorization header, "
                "or get a short-lived token for ?token="
            )
        key = self.find(credential.secret)
        if key is None:
            raise ConnectionDenied("the API key is not valid")
        return Principal(
            name=self.name_of(key),
            max_streams=key.max_streams,
            subprotocol=credential.subprotocol,
        )

    def _token(self, credential: Credential, route: str) -> Principal:
        if self.tokens is None:
            raise ConnectionDenied("this server accepts no tokens ([auth] token_secret is unset)")
        subprotocol = credential.subprotocol
        principal = self.tokens.principal(credential.secret, route, subprotocol, None)
        key = self._by_name.get(principal.name)
        if key is None:  # the key it was minted from is gone: so are its tokens
            raise ConnectionDenied("the token's API key is no longer valid")
        return replace(principal, max_streams=key.max_streams)


def issuer_from_settings(settings: AuthSettings) -> TokenIssuer | None:
    """The token issuer of ``[auth] token_secret``, or None when tokens are off."""
    if settings.token_secret is None:
        return None
    return TokenIssuer(
        settings.token_secret.get_secret_value(),
        default_ttl=min(settings.token_ttl_seconds, settings.token_max_ttl_seconds),
        max_ttl=settings.token_max_ttl_seconds,
    )


def policy_from_settings(
    settings: AuthSettings, tokens: TokenIssuer | None = None
) -> ConnectionPolicy:
    """The key policy (accepting ``tokens``' tokens too) when keys are configured;
    otherwise everyone is let in."""
    keys = load_keys(settings)
    return KeyPolicy(keys, tokens) if keys else allow_all
