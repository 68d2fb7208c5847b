"""What the client raises.

::

    StreamFailed           the stream could not be carried out
    ├── StreamRefused      the connection or call ended before ``ready`` (a refused start)
    └── StreamClosed       a request could not be sent: the stream or its connection is over

Everything else the server reports (a model error on one segment, say) arrives as a
:class:`~streamer.events.StreamError` event, and the stream goes on.
"""

from __future__ import annotations

from typing import Any

from streamer.events import StreamError


class StreamFailed(Exception):
    """The stream could not be carried out: no connection, a lost one, or no answer in time."""


class StreamRefused(StreamFailed):
    """The server did not open the stream: it answered the start with an ``error`` event
    (``overloaded``, ``shutting_down``, ``invalid_format``, ...), or ended the connection or
    call before ``ready``."""

    def __init__(
        self,
        reason: str,
        *,
        error: StreamError | None = None,
        message: dict[str, Any] | None = None,
        close_code: int | None = None,
        close_reason: str = "",
    ) -> None:
        super().__init__(reason)
        self.error = error
        """The ``error`` event, when the server sent one."""
        self.message = message
        """That event as it came (its v1 JSON object)."""
        self.close_code = close_code
        """The WebSocket close code or the gRPC status number, when known."""
        self.close_reason = close_reason


class StreamClosed(StreamFailed):
    """Audio or a request was sent after ``stop``, or after the connection or call ended."""
