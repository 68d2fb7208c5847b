"""The ``deepgram-sdk`` client pointed at a server's base URL, as a user of a self-hosted
Deepgram-compatible server builds it: the one place the vendor scripts do so."""

from __future__ import annotations

from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment


def client(url: str, key: str) -> AsyncDeepgramClient:
    """An async client whose every endpoint is the server at ``url`` (``ws://host:port``)."""
    http = url.replace("ws://", "http://", 1)
    environment = DeepgramClientEnvironment(base=http, production=url, agent=url, agent_rest=http)
    return AsyncDeepgramClient(api_key=key, environment=environment)
