"""OpenAI Realtime transcription sessions (the GA protocol), one codec object a connection.

Inbound JSON events become machine inputs: ``session.update`` a ``Restart`` of the one
stream with the new configuration (server VAD: the segmented route; ``turn_detection``
null: the simple route, where the client's ``commit`` ends an item), ``input_audio_buffer
.append`` audio, ``commit`` and ``clear``. Outbound, the stream's events become the
Realtime server events: speech started/stopped and committed from the VAD, transcription
deltas from interim results, ``completed`` from finals, ``error`` for everything that went
wrong (which never closes the socket by itself). The codec keeps what the protocol needs
per connection: the session's configuration, item ids, the manual buffer, the offset of
each stream on the session's audio clock, and unique event ids.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from streamer.audio.formats import Encoding
from streamer.events import (
    Done,
    Event,
    Ready,
    Route,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
    Turn,
)
from streamer.protocol.inputs import Audio, Commit, Input, Reply, Restart, Steer
from streamer.protocol.messages import FinalizeRequest, KeepaliveRequest, parse_start
from streamer.segmentation.segmenter import VadParams, clamp
from streamer.turn.stage import ForceEnd

RATE = 24_000
"""The only ``audio/pcm`` rate the protocol has."""
MAX_APPEND_BYTES = 15 * 1024 * 1024
"""The largest decoded ``append`` (the vendor's own limit)."""
MAX_ITEM_SECONDS = 30.0
"""The longest manually committed item: one recognizer window."""

_FORMATS = {"audio/pcm": (Encoding.PCM, RATE, 16), "audio/pcmu": (Encoding.MULAW, 8000, 8)}
_FORMATS["audio/pcma"] = (Encoding.ALAW, 8000, 8)


class SessionError(Exception):
    """A client event the session refuses: becomes an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ServerVad:
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
        }


@dataclass(frozen=True, slots=True)
class SemanticVad:
    """Items end when the end-of-turn model says the speaker finished, not at a fixed
    pause: the stream detects turns, and each turn is one item."""

    eagerness: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "semantic_vad", "eagerness": self.eagerness}

    def detection(self) -> dict[str, Any]:
        """The stream's ``turn_detection``: the longest wait (OpenAI's: 8, 4 and 2 s for
        low, medium and high), and a threshold that asks for more certainty from a less
        eager session."""
        threshold, timeout_ms = EAGERNESS[self.eagerness]
        return {"eot_threshold": threshold, "eot_timeout_ms": timeout_ms}


EAGERNESS: dict[str, tuple[float, int]] = {
    "low": (0.85, 8000),
    "medium": (0.7, 4000),
    "auto": (0.7, 4000),
    "high": (0.5, 2000),
}
"""``semantic_vad`` eagerness -> (end-of-turn threshold, longest wait in ms)."""

DEFAULT_VAD = VadParams()


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """A transcription session's effective configuration."""

    format: str = "audio/pcm"
    turn_detection: ServerVad | SemanticVad | None = ServerVad(
        DEFAULT_VAD.threshold, DEFAULT_VAD.speech_pad_ms, DEFAULT_VAD.min_silence_ms
    )
    transcription: Mapping[str, Any] = field(default_factory=lambda: {"model": "whisper-1"})
    noise_reduction: Mapping[str, Any] | None = None

    @property
    def bytes_per_second(self) -> int:
        _, rate, bits = _FORMATS[self.format]
        return rate * bits // 8

    def stream(self) -> Restart:
        """The ``Restart`` that opens a stream with this configuration."""
        encoding, rate, bits = _FORMATS[self.format]
        body: dict[str, Any] = {
            "format": {
                "channels": 1,
                "sample_rate": rate,
                "bit_depth": bits,
                "encoding": encoding.value,
            },
        }
        vad = self.turn_detection
        if vad is None:
            return Restart(parse_start(body), Route.SIMPLE.value, MAX_ITEM_SECONDS)
        if isinstance(vad, SemanticVad):
            body["word_times"] = True
            body["turn_detection"] = vad.detection()
            body["segments"] = False  # the turns are the items
            return Restart(parse_start(body), Route.SEGMENTED.value)
        body["interim_results"] = True
        body["vad"] = {
            "threshold": vad.threshold,
            "speech_pad_ms": vad.prefix_padding_ms,
            "min_silence_ms": vad.silence_duration_ms,
        }
        return Restart(parse_start(body), Route.SEGMENTED.value)

    def to_dict(self) -> dict[str, Any]:
        fmt: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            fmt["rate"] = RATE
        vad = self.turn_detection
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": dict(self.transcription),
                    "turn_detection": None if vad is None else vad.to_dict(),
                    "noise_reduction": None
                    if self.noise_reduction is None
                    else dict(self.noise_reduction),
                }
            },
        }


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SessionError("invalid_type", f"{param} must be an object", param)
    return value


def _number(vad: Mapping[str, Any], key: str, default: float) -> float:
    value = vad.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SessionError("invalid_type", f"{key} must be a number", f"turn_detection.{key}")
    return float(value)


def updated_config(current: SessionConfig, session: Any) -> SessionConfig:
    """The configuration a ``session.update`` asks for, clamped to the server's bounds;
    ``SessionError`` naming the ``param`` for a value this server does not support."""
    session = _object(session, "session")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise SessionError(
            "invalid_value",
            f"session.type {kind!r} is not supported: this server transcribes only",
            "session.type",
        )
    audio = _object(session.get("audio", {}), "session.audio")
    given = _object(audio.get("input", {}), "session.audio.input")
    config = current
    if "format" in given:
        fmt = _object(given["format"], "session.audio.input.format")
        kind = fmt.get("type", "audio/pcm")
        if kind not in _FORMATS:
            raise SessionError(
                "invalid_value",
                f"audio format {kind!r} is not supported; use audio/pcm, audio/pcmu or audio/pcma",
                "session.audio.input.format.type",
            )
        if kind == "audio/pcm" and fmt.get("rate", RATE) != RATE:
            raise SessionError(
                "invalid_value",
                f"audio/pcm is 24000 Hz only, not {fmt.get('rate')!r}",
                "session.audio.input.format.rate",
            )
        config = replace(config, format=kind)
    if "transcription" in given:
        transcription = given["transcription"]
        if transcription is not None:
            transcription = dict(_object(transcription, "session.audio.input.transcription"))
        config = replace(config, transcription=transcription or {})
    if "noise_reduction" in given:
        noise = given["noise_reduction"]
        config = replace(
            config,
            noise_reduction=None
            if noise is None
            else dict(_object(noise, "session.audio.input.noise_reduction")),
        )
    if "turn_detection" in given:
        config = replace(config, turn_detection=_turn_detection(given["turn_detection"]))
    return config


def _turn_detection(value: Any) -> ServerVad | SemanticVad | None:
    if value is None:
        return None
    vad = _object(value, "session.audio.input.turn_detection")
    kind = vad.get("type", "server_vad")
    if kind == "semantic_vad":
        eagerness = vad.get("eagerness", "auto")
        if eagerness not in EAGERNESS:
            raise SessionError(
                "invalid_value",
                f"eagerness {eagerness!r} is not one of low, medium, high, auto",
                "session.audio.input.turn_detection.eagerness",
            )
        return SemanticVad(eagerness)
    if kind != "server_vad":
        raise SessionError(
            "invalid_value",
            f"turn_detection {kind!r} is not supported; use server_vad, semantic_vad or null",
            "session.audio.input.turn_detection.type",
        )
    try:
        params = clamp(
            replace(
                DEFAULT_VAD,
                threshold=_number(vad, "threshold", DEFAULT_VAD.threshold),
                speech_pad_ms=round(_number(vad, "prefix_padding_ms", DEFAULT_VAD.speech_pad_ms)),
                min_silence_ms=round(
                    _number(vad, "silence_duration_ms", DEFAULT_VAD.min_silence_ms)
                ),
            )
        )
    except ValueError as error:
        raise SessionError(
            "invalid_value", str(error), "session.audio.input.turn_detection"
        ) from None
    return ServerVad(params.threshold, params.speech_pad_ms, params.min_silence_ms)


@dataclass(slots=True)
class _Item:
    id: str
    start_ms: int
    sent: str = ""
    """The transcript the deltas have carried so far."""


def _text(output: Mapping[str, Any]) -> str:
    text = output.get("text")
    if isinstance(text, str):
        return text
    return json.dumps(dict(output), sort_keys=True, separators=(",", ":"))


class RealtimeCodec:
    """One connection's Realtime protocol state: decode client events, encode the
    stream's events (each into zero or more server events)."""

    def __init__(self, max_append_bytes: int = MAX_APPEND_BYTES) -> None:
        self.config = SessionConfig()
        self.max_append_bytes = max_append_bytes
        self._session_id = "sess_" + uuid.uuid4().hex[:24]
        self._event_ids = 0
        self._buffer = bytearray()
        self._fed_bytes = 0
        """Audio the streams have been given, as bytes of the session's format history."""
        self._fed_ms = 0.0
        self._offsets: deque[float] = deque()
        """The session-clock start (ms) of each stream asked for and not yet ready."""
        self._offset_ms = 0.0
        self._open: _Item | None = None
        self._pending: deque[_Item] = deque()
        self._last_item: str | None = None
        self._client_event: str | None = None
        """The ``event_id`` of the client event being decoded, for its errors."""

    # Inbound.

    def opening(self) -> Input:
        """The first input of a connection: open the default stream, say ``created``."""
        return self._restart(self.config, "session.created", flush=True)

    def decode_text(self, text: str) -> Input:
        """One client event as a machine input; what the session refuses is a ``Reply``
        carrying an ``error`` event."""
        try:
            return self._decode(text)
        except SessionError as error:
            return Reply(self.error(error.code, error.message, error.param))

    def decode_bytes(self, data: bytes) -> Input:
        return Reply(
            self.error(
                "invalid_message",
                "binary frames are not part of this protocol: send input_audio_buffer.append",
            )
        )

    def _decode(self, text: str) -> Input:
        try:
            body = json.loads(text)
        except ValueError as error:
            raise SessionError("invalid_json", f"the event is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise SessionError("invalid_json", "an event must be a JSON object")
        kind = body.get("type")
        self._client_event = body.get("event_id") if isinstance(body.get("event_id"), str) else None
        if kind == "session.update":
            config = updated_config(self.config, body.get("session"))
            return self._restart(config, "session.updated", flush=True)
        if kind == "input_audio_buffer.append":
            return self._append(body.get("audio"))
        if kind == "input_audio_buffer.commit":
            return self._commit()
        if kind == "input_audio_buffer.clear":
            self._buffer.clear()
            self._open = None
            self._pending.clear()
            cleared = {"type": "input_audio_buffer.cleared"}
            if self.config.turn_detection is None:
                return Reply(cleared)
            # Audio already in the voice detector cannot be taken back: a fresh stream.
            return self._restart(self.config, None, flush=False, reply=cleared)
        raise SessionError("invalid_value", f"unknown or unsupported event type {kind!r}", "type")

    def _restart(
        self,
        config: SessionConfig,
        kind: str | None,
        *,
        flush: bool,
        reply: dict[str, Any] | None = None,
    ) -> Restart:
        self.config = config
        self._buffer.clear()
        self._offsets.append(self._fed_ms)
        if kind is not None:
            reply = {"type": kind, "session": {"id": self._session_id, **config.to_dict()}}
        return replace(config.stream(), reply=reply, flush=flush)

    def _append(self, audio: Any) -> Input:
        if not isinstance(audio, str):
            raise SessionError("invalid_type", "audio must be a base64 string", "audio")
        if len(audio) > self.max_append_bytes * 4 // 3 + 4:
            raise SessionError(
                "input_audio_buffer_too_large",
                f"an append may carry at most {self.max_append_bytes} bytes of audio",
                "audio",
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise SessionError("invalid_value", "audio is not valid base64", "audio") from None
        if self.config.turn_detection is not None:
            self._account(len(data))
            return Audio(data)
        room = int(MAX_ITEM_SECONDS * self.config.bytes_per_second) - len(self._buffer)
        if len(data) > room:
            raise SessionError(
                "input_audio_buffer_full",
                f"the buffer holds at most {MAX_ITEM_SECONDS:g} s: commit first",
                "audio",
            )
        self._buffer += data
        return KeepaliveRequest(request="keepalive")

    def _commit(self) -> Input:
        if isinstance(self.config.turn_detection, SemanticVad):
            return Steer(ForceEnd())  # the open turn ends its item now
        if self.config.turn_detection is not None:
            return FinalizeRequest(request="finalize")  # the open speech ends its item
        if not self._buffer:
            raise SessionError("input_audio_buffer_commit_empty", "the input audio buffer is empty")
        data = bytes(self._buffer)
        self._buffer.clear()
        item = _Item(self._new_item_id(), round(self._fed_ms))
        self._account(len(data))
        self._pending.append(item)
        return Commit(data, self._committed(item))

    def _account(self, size: int) -> None:
        self._fed_bytes += size
        self._fed_ms += 1000 * size / self.config.bytes_per_second

    def _new_item_id(self) -> str:
        return "item_" + uuid.uuid4().hex[:24]

    def _committed(self, item: _Item) -> dict[str, Any]:
        body = {
            "type": "input_audio_buffer.committed",
            "item_id": item.id,
            "previous_item_id": self._last_item,
        }
        self._last_item = item.id
        return body

    # Outbound.

    def error(self, code: str, message: str, param: str | None = None) -> dict[str, Any]:
        kind = "server_error" if code in _SERVER_CODES else "invalid_request_error"
        return {
            "type": "error",
            "error": {
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": self._client_event,
            },
        }

    def encode(self, event: Event | Mapping[str, Any]) -> list[str]:
        """The text frames of one stream event (or of one of the codec's own replies)."""
        return [self._frame(body) for body in self._events(event)]

    def _frame(self, body: Mapping[str, Any]) -> str:
        self._event_ids += 1
        event_id = f"event_{self._session_id[5:13]}{self._event_ids:08d}"
        return json.dumps({"event_id": event_id, **body}, ensure_ascii=False, allow_nan=False)

    def _ms(self, seconds: float) -> int:
        return round(self._offset_ms + 1000 * seconds)

    def _events(self, event: Event | Mapping[str, Any]) -> list[Mapping[str, Any]]:
        if isinstance(event, Mapping):
            return [event]
        if isinstance(event, Ready):
            if self._offsets:
                self._offset_ms = self._offsets.popleft()
            self._open = None
            return []
        if isinstance(event, Done):
            return []
        if isinstance(event, Turn):
            return self._turn(event)
        if isinstance(self.config.turn_detection, SemanticVad) and isinstance(
            event, SpeechStarted | SpeechEnded | SegmentResult
        ):
            return []  # the turns are the items: the VAD's segments are not shown
        if isinstance(event, SpeechStarted):
            item = self._open = _Item(self._new_item_id(), self._ms(event.time))
            return [
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": item.start_ms,
                    "item_id": item.id,
                }
            ]
        if isinstance(event, SpeechEnded):
            item = self._open or _Item(self._new_item_id(), self._ms(event.time))
            self._open = None
            self._pending.append(item)
            return [
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": self._ms(event.time),
                    "item_id": item.id,
                },
                self._committed(item),
            ]
        if isinstance(event, SegmentResult):
            return self._result(event)
        if isinstance(event, StreamError):
            return self._stream_error(event)
        raise TypeError(f"no Realtime form for {type(event).__name__}")

    def _result(self, result: SegmentResult) -> list[Mapping[str, Any]]:
        text = _text(result.output)
        if not result.final:
            # A recognizer ends words it has not finished with "..." or a comma: only
            # what it has settled on is sent.
            text = text.rstrip(" .,;:!?…-")
            item = self._open or (self._pending[0] if self._pending else None)
            if item is None or not text.startswith(item.sent) or text == item.sent:
                return []  # an interim that revises the words: the final will say
            return [self._delta(item, text)]
        if self._pending:
            item = self._pending.popleft()
            out: list[Mapping[str, Any]] = []
        else:  # a final with no item of its own (speech split at the longest segment)
            item = _Item(self._new_item_id(), self._ms(result.start))
            out = [self._committed(item)]
        if text and text.startswith(item.sent) and text != item.sent:
            out.append(self._delta(item, text))
        out.append(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": round(result.end - result.start, 3)},
            }
        )
        return out

    def _turn(self, turn: Turn) -> list[Mapping[str, Any]]:
        """``semantic_vad``: a turn is an item. It opens at ``StartOfTurn``; ``Update``s
        carry its deltas; ``EndOfTurn`` stops, commits and completes it."""
        if turn.event == "StartOfTurn":
            opened = self._open = _Item(self._new_item_id(), self._ms(turn.audio_window_start))
            return [
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": opened.start_ms,
                    "item_id": opened.id,
                }
            ]
        item = self._open
        if item is None:
            return []
        text = turn.transcript
        if turn.event != "EndOfTurn":
            if text and text.startswith(item.sent) and text != item.sent:
                return [self._delta(item, text)]
            return []
        self._open = None
        out: list[Mapping[str, Any]] = [
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": self._ms(turn.audio_window_end),
                "item_id": item.id,
            },
            self._committed(item),
        ]
        if text and text.startswith(item.sent) and text != item.sent:
            out.append(self._delta(item, text))
        seconds = round(turn.audio_window_end - turn.audio_window_start, 3)
        out.append(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": seconds},
            }
        )
        return out

    def _delta(self, item: _Item, text: str) -> Mapping[str, Any]:
        delta, item.sent = text[len(item.sent) :], text
        return {
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item.id,
            "content_index": 0,
            "delta": delta,
        }

    def _stream_error(self, error: StreamError) -> list[Mapping[str, Any]]:
        if error.start is not None and self._pending:
            item = self._pending.popleft()  # a segment's inference failed
            return [
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item.id,
                    "content_index": 0,
                    "error": {
                        "type": "transcription_error",
                        "code": str(error.code),
                        "message": error.message,
                        "param": None,
                    },
                }
            ]
        return [self.error(str(error.code), error.message)]


_SERVER_CODES = frozenset(
    (
        "internal_error",
        "overloaded",
        "shutting_down",
        "model_error",
        "model_crashed",
        "worker_crashed",
        "inference_timeout",
    )
)
