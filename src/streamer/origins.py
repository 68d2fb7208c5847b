"""The origin allowlist: which web pages may open connections from a visitor's browser.

A browser sends the page's origin (``Origin: https://app.example``) with every WebSocket
upgrade, and lets any page open a WebSocket to any server: without this check, a page on
another site could use the visitor's network position or cookies (cross-site WebSocket
hijacking). An origin is let in when it is on ``[server] allowed_origins`` (exactly: scheme,
host and port, with the scheme's default port filled in; no suffix or wildcard matching),
or when it is the server's own (its host and port are the ``Host`` the browser connected
to, which is how the demo page at ``/`` is always allowed). ``*`` on the list turns the
check off. A connection without ``Origin`` (any non-browser client) is let in unless
``allow_missing_origin`` is off. A refused origin is HTTP 403 before the upgrade.

The check wraps another policy (the API keys), so one policy still answers for every
transport.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from streamer.errors import ConnectionDenied
from streamer.policy import ConnectionPolicy, ConnectionRequest, Principal

DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
ANY: Final = "*"


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` as (scheme, host, port), lower case; None if it is not one
    (a path, user info, an opaque ``null``, an unknown scheme)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def parse_host(host: str, scheme: str) -> tuple[str, int] | None:
    """A ``Host`` header as (host, port), the port defaulting to ``scheme``'s."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme]


class OriginPolicy:
    """Refuses (403) browsers on pages from origins not allowed, then asks ``inner``."""

    def __init__(
        self,
        inner: ConnectionPolicy,
        allowed: Iterable[str] = (),
        *,
        allow_missing: bool = True,
    ) -> None:
        self.inner = inner
        self.allow_any = False
        self._allowed: set[tuple[str, str, int]] = set()
        for origin in allowed:
            if origin.strip() == ANY:
                self.allow_any = True
                continue
            parsed = parse_origin(origin)
            if parsed is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
            self._allowed.add(parsed)
        self.allow_missing = allow_missing

    def allows(self, request: ConnectionRequest) -> bool:
        """Whether the request's ``Origin`` may connect."""
        origin = request.headers.get("origin")
        if origin is None:
            return self.allow_missing
        if self.allow_any:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        if parsed in self._allowed:
            return True
        own = parse_host(request.headers.get("host", ""), parsed[0])
        return own is not None and own == parsed[1:]

    def __call__(self, request: ConnectionRequest) -> Principal:
        if not self.allows(request):
            if "origin" not in request.headers:
                raise ConnectionDenied("connections without an Origin are not allowed", 403)
            raise ConnectionDenied("connections from this origin are not allowed", 403)
        return self.inner(request)
