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
    V1_TURN_EVENTS,
    Done,
    Event,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
    Turn,
    TurnWord,
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
    if isinstance(event, Turn):
        body = {
            "type": "turn",
            "channel": event.channel,
            "event": V1_TURN_EVENTS[event.event],
            "turn_index": event.turn_index,
            "transcript": event.transcript,
            "words": [
                {"word": w.word, "confidence": w.confidence, "start": w.start, "end": w.end}
                for w in event.words
            ],
            "start_time": event.audio_window_start,
            "end_time": event.audio_window_end,
            "confidence": event.end_of_turn_confidence,
        }
        if event.trigger is not None:
            body["trigger"] = event.trigger
        return body
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
    if kind == "turn":
        names = {v: k for k, v in V1_TURN_EVENTS.items()}
        return Turn(
            channel=int(body["channel"]),
            event=names[str(body["event"])],
            turn_index=int(body["turn_index"]),
            transcript=str(body["transcript"]),
            words=tuple(
                TurnWord(str(w["word"]), float(w["confidence"]), float(w["start"]), float(w["end"]))
                for w in body.get("words", ())
            ),
            audio_window_start=_number(body, "start_time"),
            audio_window_end=_number(body, "end_time"),
            end_of_turn_confidence=_number(body, "confidence"),
            trigger=body.get("trigger"),
        )
    return None
