"""Twilio's request signature as a connection policy for the Media Streams route.

Twilio signs each request with the account's auth token: ``X-Twilio-Signature`` is the
base64 HMAC-SHA1 of the URL it requested (for a WebSocket, the ``wss://`` URL of the
``<Stream>``, with no parameters appended). Twilio cannot send an API key, so on this
route a valid signature is the credential; a missing or bad one is 403 before the
upgrade. Like Twilio's own validator, the URL is tried with and without its default port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from streamer.errors import ConnectionDenied
from streamer.policy import ConnectionPolicy, ConnectionRequest, Principal

HEADER = "x-twilio-signature"
PRINCIPAL = Principal(name="twilio")
_DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}


def signature(token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's signature of a request: ``url`` then each POST parameter's name and value,
    sorted by name, HMAC-SHA1 with the auth token, base64."""
    params = params or {}
    data = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _variants(url: str) -> list[str]:
    """``url`` as given, and with its default port added or removed."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    auth = parts.netloc.rpartition("@")[0]
    prefix = f"{auth}@" if auth else ""
    out = [url]
    if parts.port is None and default is not None:
        out.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        out.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return out


def signed_url(request: ConnectionRequest, public_url: str | None) -> str | None:
    """The URL Twilio signed: the request's path and query on ``public_url`` (scheme and
    host), or on the request's own scheme and host (``X-Forwarded-Proto`` honoured)."""
    if request.url is None:
        return None
    parts = urlsplit(request.url)
    if public_url:
        base = urlsplit(public_url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
    scheme = parts.scheme
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if forwarded in ("https", "wss"):
        scheme = "wss"
    elif forwarded in ("http", "ws"):
        scheme = "ws"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


class SignaturePolicy:
    """Lets in requests whose ``X-Twilio-Signature`` is the auth token's signature of the
    URL; 403 otherwise."""

    def __init__(self, auth_token: str, public_url: str | None = None) -> None:
        if not auth_token:
            raise ValueError("a signature policy needs the account's auth token")
        self._token = auth_token
        self.public_url = public_url

    def __call__(self, request: ConnectionRequest) -> Principal:
        given = request.headers.get(HEADER)
        if not given:
            raise ConnectionDenied("this route needs Twilio's X-Twilio-Signature", status=403)
        url = signed_url(request, self.public_url)
        if url is None or not any(
            hmac.compare_digest(signature(self._token, candidate).encode(), given.encode())
            for candidate in _variants(url)
        ):
            raise ConnectionDenied("the X-Twilio-Signature is not valid for this URL", status=403)
        return PRINCIPAL


def by_route(routes: Mapping[str, ConnectionPolicy], default: ConnectionPolicy) -> ConnectionPolicy:
    """One policy from a policy per route name and one for every other route."""

    def policy(request: ConnectionRequest) -> Principal:
        return routes.get(request.route, default)(request)

    return policy
