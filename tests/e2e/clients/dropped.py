"""Fails a vendor-client script whose SDK said it dropped a message it could not use.

SDKs skip a message they cannot parse with a log line, not an exception (deepgram-sdk:
"Skipping unknown WebSocket message"; LiveKit's plugin: "unexpected deepgram message",
"failed to process deepgram message"): a server message in the wrong shape would pass
unnoticed. ``watch()`` records such lines from the standard logging and, where the SDK
logs through loguru (Pipecat), from loguru too; ``check()`` exits with status 3 naming them.
"""

from __future__ import annotations

import logging
import re
import sys

DROPPED = re.compile(
    r"skipping unknown|unexpected .*message|failed to (process|parse)|could not (parse|decode)"
    r"|unknown (message|event)|invalid (message|event)",
    re.IGNORECASE,
)
"""What an SDK says when it drops a message."""

seen: list[str] = []


class _Recorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if DROPPED.search(message):
            seen.append(f"{record.name}: {message}")


def watch() -> None:
    """Record every log line that says a message was dropped, from now on."""
    root = logging.getLogger()
    root.addHandler(_Recorder(logging.DEBUG))
    # Warnings still reach stderr, as they did through logging's last resort.
    printer = logging.StreamHandler(sys.stderr)
    printer.setLevel(logging.WARNING)
    root.addHandler(printer)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    try:
        from loguru import logger
    except ImportError:
        return

    def sink(message: object) -> None:
        text = str(message)
        if DROPPED.search(text):
            seen.append(text.strip())

    logger.add(sink, level="WARNING")


def check() -> None:
    """Exit with status 3 if the SDK dropped any message."""
    if seen:
        print("the SDK dropped messages it could not use:", *seen, sep="\n  ", file=sys.stderr)
        sys.exit(3)
