"""API keys: the connection policy that a server with ``[auth] api_keys`` runs.

A client presents a key the ways the clients people use send one:

- the header ``Authorization: Token <key>`` or ``Authorization: Bearer <key>`` (the scheme in
  any case), on a WebSocket upgrade or as gRPC metadata;
- in a browser, which cannot set headers on a WebSocket, the subprotocol pair
  ``Sec-WebSocket-Protocol: token, <key>`` (or ``bearer, <key>``): the server accepts the
  connection with ``token`` (or ``bearer``) as its subprotocol and never echoes the key;
- OpenAI Realtime's browser form, the subprotocols ``realtime`` and
  ``openai-insecure-api-key.<key>``: accepted with ``realtime``.

A missing or wrong key is HTTP 401 before the upgrade (gRPC: UNAUTHENTICATED). Keys are
compared in constant time and never logged: a principal is named by the key's ``name`` or a
short hash of it. With no keys configured, every connection is let in (and the server warns
at start).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from streamer.errors import ConnectionDenied
from streamer.policy import ConnectionPolicy, ConnectionRequest, Principal, allow_all

SCHEMES = ("token", "bearer")
"""Authorization schemes (and subprotocol names) that carry a key."""
REALTIME_SUBPROTOCOL = "realtime"
REALTIME_KEY_PREFIX = "openai-insecure-api-key."
"""OpenAI Realtime's browser subprotocols: ``realtime`` and this prefix before the key."""


class ApiKey(BaseModel):
    """A key with a name (for logs and metrics) and, optionally, a stream quota."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=8, description="The secret itself; at least 8 characters.")
    name: str | None = None
    max_streams: int | None = Field(
        default=None, ge=1, description="Concurrent streams of this key (and its tokens)."
    )


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str | ApiKey] = Field(
        default_factory=list,
        description="Keys that may connect: strings, or tables with key, name, max_streams.",
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of more keys, one a line ('#' starts a comment)."
    )


@dataclass(frozen=True, slots=True)
class Credential:
    """A key as the client presented it, and the subprotocol that carried it, if any."""

    secret: str
    subprotocol: str | None = None


def presented(request: ConnectionRequest) -> Credential | None:
    """The key a connection presents: the Authorization header, else a subprotocol pair."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in SCHEMES and value.strip():
        return Credential(value.strip())
    offered = [p.strip() for p in request.subprotocols]
    for name, secret in itertools.pairwise(offered):
        if name.lower() in SCHEMES and secret:
            return Credential(secret, subprotocol=name)
    if REALTIME_SUBPROTOCOL in offered:
        for name in offered:
            secret = name.removeprefix(REALTIME_KEY_PREFIX)
            if name.startswith(REALTIME_KEY_PREFIX) and secret:
                return Credential(secret, subprotocol=REALTIME_SUBPROTOCOL)
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
    """Lets in connections that present one of ``keys``."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys: Sequence[ApiKey] = tuple(keys)
        if not self._keys:
            raise ValueError("a key policy needs at least one key")

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
        key = self.find(credential.secret)
        if key is None:
            raise ConnectionDenied("the API key is not valid")
        return Principal(
            name=key.name or fingerprint(key.key),
            max_streams=key.max_streams,
            subprotocol=credential.subprotocol,
        )


def policy_from_settings(settings: AuthSettings) -> ConnectionPolicy:
    """The key policy when keys are configured; otherwise everyone is let in."""
    keys = load_keys(settings)
    return KeyPolicy(keys) if keys else allow_all
