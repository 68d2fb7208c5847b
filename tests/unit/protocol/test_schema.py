"""The committed JSON Schema of the protocol matches the message models."""

from __future__ import annotations

from pathlib import Path

from streamer.protocol.schema import render

SCHEMA = Path(__file__).parents[3] / "docs" / "protocol.schema.json"


def test_committed_schema_is_current() -> None:
    assert SCHEMA.read_text() == render(), "run `make schema` and commit docs/protocol.schema.json"


def test_schema_covers_every_message() -> None:
    text = render()
    for name in ("StartRequest", "StopRequest", "FinalizeRequest", "KeepaliveRequest"):
        assert name in text
    for name in ("ReadyEvent", "SegmentEvent", "ActiveEvent", "InactiveEvent", "ErrorEvent"):
        assert name in text
    assert "DoneEvent" in text
    assert "TurnEvent" in text and "TurnDetection" in text
