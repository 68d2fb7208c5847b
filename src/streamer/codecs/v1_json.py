"""Protocol v1 over WebSocket: JSON text and binary audio frames.

Inbound, a text frame is parsed by ``protocol.messages`` into a typed request and a binary
frame is audio; outbound, an event becomes the JSON object ``docs/protocol.md`` describes
(fields that are ``None`` are left out, as they always were).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streamer.events import (
    SEGMENT_FIELDS,
    Done,
    Event,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
)
from streamer.protocol.inputs import Audio, Input
from streamer.protocol.messages import parse_client_message


def decode_text(text: str | bytes) -> Input:
    """A text frame: one of the protocol's requests (``ClientError`` when it is none)."""
    return parse_client_message(text)


def decode_bytes(data: bytes) -> Input:
    """A binary frame: audio."""
    return Audio(data)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON object of an event, as a dict."""
    if isinstance(event, SegmentResult):
        body: dict[str, Any] = {
            "type": "segment",
            "channel": event.channel,
            "start_time": event.start,
            "end_time": event.end,
            "is_final": event.final,
        }
        for key, value in event.output.items():
            if value is not None:
                body[key] = value
        return body
    if isinstance(event, SpeechStarted | SpeechEnded):
        return {"type": event.kind, "channel": event.channel, "time": event.time}
    if isinstance(event, Ready):
        body = {
            "type": "ready",
            "session_id": event.session_id,
            "route": event.route,
            "model": event.model,
            "model_sample_rate": event.model_sample_rate,
            "channels": event.channels,
        }
        if event.trace_id is not None:
            body["trace_id"] = event.trace_id
        if event.warnings:
            body["warnings"] = list(event.warnings)
        return body
    if isinstance(event, StreamError):
        body = {"type": "error", "code": str(event.code), "message": event.message}
        for key, value in (
            ("channel", event.channel),
            ("start_time", event.start),
            ("end_time", event.end),
            ("retryable", event.retryable),
        ):
            if value is not None:
                body[key] = value
        return body
    if isinstance(event, Done):
        return {"type": "done", "audio_seconds": event.audio_seconds}
    raise TypeError(f"no v1 form for {type(event).__name__}")


def encode_event(event: Event) -> str:
    """The text frame of an event."""
    return json.dumps(event_to_dict(event), ensure_ascii=False, allow_nan=False)


def _number(body: Mapping[str, Any], key: str) -> float:
    return float(body[key])


def event_from_dict(body: Mapping[str, Any]) -> Event | None:
    """The event a v1 JSON object stands for, or None for a type this version does not
    know (which clients must ignore). ``KeyError``/``TypeError``/``ValueError`` when a
    known event lacks a field."""
    kind = body.get("type")
    if kind == "segment":
        output = {k: v for k, v in body.items() if k not in SEGMENT_FIELDS}
        return SegmentResult(
            channel=int(body["channel"]),
            start=_number(body, "start_time"),
            end=_number(body, "end_time"),
            final=bool(body.get("is_final", True)),
            output=output,
        )
    if kind == "active":
        return SpeechStarted(channel=int(body["channel"]), time=_number(body, "time"))
    if kind == "inactive":
        return SpeechEnded(channel=int(body["channel"]), time=_number(body, "time"))
    if kind == "ready":
        return Ready(
            session_id=str(body["session_id"]),
            route=str(body["route"]),
            model=str(body["model"]),
            model_sample_rate=int(body["model_sample_rate"]),
            channels=int(body["channels"]),
            trace_id=body.get("trace_id"),
            warnings=tuple(body.get("warnings", ())),
        )
    if kind == "error":
        return StreamError(
            code=str(body["code"]),
            message=str(body.get("message", "")),
            channel=body.get("channel"),
            start=body.get("start_time"),
            end=body.get("end_time"),
            retryable=body.get("retryable"),
        )
    if kind == "done":
        return Done(audio_seconds=_number(body, "audio_seconds"))
    return None
