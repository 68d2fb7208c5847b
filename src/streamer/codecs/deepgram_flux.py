"""Deepgram Flux, the turn-taking live API (``GET /v2/listen``), over the shared connection
machine.

No I/O. :func:`parse_query` reads the upgrade request's query into ``FluxParams`` (a
malformed value is ``BadHandshake``: HTTP 400 naming the parameter). A ``FluxCodec`` per
connection turns the query into the stream's ``start`` (a segmented stream with turn
detection), Flux's JSON messages into the machine's inputs (``Configure`` -> new turn
thresholds for the stream, answered by ``ConfigureSuccess`` or ``ConfigureFailure``;
``ForceEndTurn`` -> the turn ends now; ``CloseStream`` -> flush, then close 1000), and the
stream's events into Flux's messages: ``Connected`` when the stream opens, ``TurnInfo``
for each turn event, ``Error`` (or ``Warning`` for a failure that does not end the
stream). Every server message carries ``sequence_id``, from 0, one more each message.

The model decides the words: ``keyterm``, ``tag``, ``mip_opt_out`` and the other
parameters Flux takes are accepted (their values checked where they have a form) and
ignored.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from streamer.audio.formats import AudioFormat
from streamer.codecs.deepgram import ENCODINGS, REFUSED_ENCODINGS, close_code
from streamer.codecs.query import Query, format_body, typed_message
from streamer.errors import BadHandshake, ClientError, InvalidMessage
from streamer.events import Done, Event, Ready, StreamError, Turn
from streamer.protocol.inputs import Audio, Input, Reply, Steer
from streamer.protocol.messages import (
    KeepaliveRequest,
    StartRequest,
    StopRequest,
    TurnDetection,
    parse_start,
)
from streamer.turn.stage import ForceEnd

__all__ = [
    "DEFAULT_MODEL",
    "IGNORED_PARAMETERS",
    "FluxCodec",
    "FluxParams",
    "close_code",
    "codec_for",
    "parse_query",
]

DEFAULT_MODEL = "flux-general-en"
"""The Flux model clients name; any ``flux-`` model is taken, and reported back."""

IGNORED_PARAMETERS = frozenset(
    ("keyterm", "tag", "mip_opt_out", "language_hint", "profanity_filter", "numerals", "redact")
)
"""Accepted (booleans among them checked) and ignored: the model decides these."""

_BOOLEAN_IGNORED = ("mip_opt_out", "profanity_filter", "numerals")

# Flux's documented ranges.
EOT_THRESHOLD = (0.5, 0.9)
EAGER_EOT_THRESHOLD = (0.3, 0.9)
EOT_TIMEOUT_MS = (500, 10_000)

CONFIGURE_FAILED = "INVALID_CONFIGURATION"
"""``ConfigureFailure.code`` for thresholds or keyterms out of range or of the wrong type."""


@dataclass(frozen=True, slots=True)
class FluxParams:
    """The query of a ``/v2/listen`` upgrade, checked."""

    model: str
    encoding: str
    sample_rate: int
    turns: TurnDetection
    keyterms: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    mip_opt_out: bool = False

    def audio_format(self) -> AudioFormat:
        """The format of the audio the client sends (Flux streams are mono)."""
        encoding, bits = ENCODINGS[self.encoding]
        return AudioFormat(1, self.sample_rate, bits, False, encoding)

    def start_request(self) -> StartRequest:
        """The stream's ``start``, as the core takes it: turns, with word times."""
        fmt = self.audio_format()
        return parse_start(
            {
                "format": format_body(fmt),
                "word_times": True,
                "turn_detection": self.turns.model_dump(),
                "segments": False,  # Flux shows turns only: the segments are not decoded
            }
        )


def _refuse(parameter: str, message: str) -> BadHandshake:
    text = f"{parameter}: {message}"
    body = {
        "type": "Error",
        "code": "INVALID_QUERY_PARAMETER",
        "description": text,
        "parameter": parameter,
    }
    return BadHandshake(text, parameter, body)


def parse_query(items: Sequence[tuple[str, str]]) -> FluxParams:
    """Check a ``/v2/listen`` query (every item, repeated ones included).

    Unknown parameters are ignored; a malformed value raises ``BadHandshake`` naming the
    parameter.
    """
    query = Query(items, _refuse)
    model = (query.get("model") or "").strip()
    if not model:
        raise _refuse("model", f"is required (use {DEFAULT_MODEL})")
    if not model.startswith("flux-"):
        raise _refuse("model", f"{model!r} is not a Flux model; use {DEFAULT_MODEL}")
    encoding, sample_rate = query.raw_audio(
        ENCODINGS,
        REFUSED_ENCODINGS,
        f"is required: the server takes raw audio only ({', '.join(ENCODINGS)})",
    )
    eot = query.number("eot_threshold", *EOT_THRESHOLD)
    eager = query.number("eager_eot_threshold", *EAGER_EOT_THRESHOLD)
    timeout = query.integer("eot_timeout_ms", *EOT_TIMEOUT_MS)
    eot = 0.7 if eot is None else eot
    if eager is not None and eager > eot:
        raise _refuse(
            "eager_eot_threshold", f"must not be above eot_threshold ({eot:g}), got {eager:g}"
        )
    for name in _BOOLEAN_IGNORED:
        query.boolean(name)
    params = FluxParams(
        model=model,
        encoding=encoding,
        sample_rate=sample_rate,
        turns=TurnDetection(
            eot_threshold=eot,
            eager_eot_threshold=eager,
            eot_timeout_ms=5000 if timeout is None else timeout,
        ),
        keyterms=query.all("keyterm"),
        tags=query.all("tag"),
        mip_opt_out=query.boolean("mip_opt_out"),
    )
    try:
        params.audio_format().validate()
        params.start_request()
    except ClientError as error:
        raise _refuse("sample_rate", error.message) from None
    return params


def _keyterms(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(k, str) for k in raw):
        return tuple(raw)
    raise ValueError("keyterms must be a string or a list of strings")


class FluxCodec:
    """One ``/v2/listen`` connection's codec: Flux's messages in and out."""

    def __init__(self, params: FluxParams) -> None:
        self.params = params
        self.opening: tuple[Input, ...] = (params.start_request(),)
        self.request_id = str(uuid.uuid4())
        self.turns = params.turns
        """The thresholds in force (the query's, then each accepted ``Configure``'s)."""
        self.keyterms = params.keyterms
        self._sequence = itertools.count()

    # Inbound.

    def decode_text(self, text: str) -> Input:
        """A text frame: ``Configure``, ``ForceEndTurn``, ``CloseStream`` (or ``KeepAlive``,
        which Flux's clients may send and which changes nothing)."""
        body = typed_message(text)
        kind = body.get("type")
        if kind == "CloseStream":
            return StopRequest(request="stop", disconnect=True)
        if kind == "ForceEndTurn":
            return Steer(ForceEnd())
        if kind == "Configure":
            return self._configure(body)
        if kind == "KeepAlive":
            return KeepaliveRequest(request="keepalive")
        raise InvalidMessage(
            f"unknown message type {kind!r}; expected Configure, ForceEndTurn or CloseStream"
        )

    def decode_bytes(self, data: bytes) -> Input:
        """A binary frame: audio. An empty one changes nothing (it does not end the
        stream: ``CloseStream`` does)."""
        if not data:
            return KeepaliveRequest(request="keepalive")
        return Audio(data)

    def _configure(self, body: Mapping[str, Any]) -> Input:
        """New thresholds (each one given replaces the one in force) and keyterms."""
        thresholds = body.get("thresholds")
        try:
            if thresholds is not None and not isinstance(thresholds, dict):
                raise ValueError("thresholds must be an object")
            given = {k: v for k, v in (thresholds or {}).items() if v is not None}
            for name, value in given.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number")
            if "eot_timeout_ms" in given:
                timeout = given["eot_timeout_ms"]
                if timeout != int(timeout):
                    raise ValueError("eot_timeout_ms must be an integer")
                given["eot_timeout_ms"] = int(timeout)
            merged = {**self.turns.model_dump(), **given}
            turns = TurnDetection.model_validate(merged)
            keyterms = self.keyterms
            if body.get("keyterms") is not None:
                keyterms = _keyterms(body["keyterms"])
        except (ValueError, ValidationError) as error:
            return Reply(self._configure_failure(_reason(error)))
        self.turns, self.keyterms = turns, keyterms
        success: dict[str, Any] = {
            "type": "ConfigureSuccess",
            "request_id": self.request_id,
            "thresholds": _thresholds(turns),
            "keyterms": list(keyterms),
        }
        if isinstance(body.get("numerals"), bool):
            success["numerals"] = body["numerals"]
        return Steer(turns, reply=success)

    def _configure_failure(self, description: str) -> dict[str, Any]:
        return {
            "type": "ConfigureFailure",
            "request_id": self.request_id,
            "code": CONFIGURE_FAILED,
            "description": description,
        }

    # Outbound.

    def encode(self, event: Event | Mapping[str, Any]) -> list[str]:
        """The Flux messages for one event or reply (perhaps none), numbered."""
        return [json.dumps(m, ensure_ascii=False, allow_nan=False) for m in self.messages(event)]

    def messages(self, event: Event | Mapping[str, Any]) -> list[dict[str, Any]]:
        """``encode``, as dicts."""
        out: list[dict[str, Any]]
        if isinstance(event, Mapping):
            out = [dict(event)]
        elif isinstance(event, Ready):
            self.request_id = event.session_id
            # The model the client named is reported back (Flux's Connected has no model
            # field; clients keep unknown ones).
            out = [{"type": "Connected", "request_id": self.request_id, "model": self.params.model}]
        elif isinstance(event, Turn):
            out = [self._turn_info(event)]
        elif isinstance(event, StreamError):
            out = [self._error(event)]
        elif isinstance(event, Done):
            out = []
        else:
            out = []  # speech, segments, finalize marks: Flux speaks only of turns
        for message in out:
            message["sequence_id"] = next(self._sequence)
        return out

    def _turn_info(self, event: Turn) -> dict[str, Any]:
        info: dict[str, Any] = {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "event": event.event,
            "turn_index": event.turn_index,
            "audio_window_start": round(event.audio_window_start, 3),
            "audio_window_end": round(event.audio_window_end, 3),
            "transcript": event.transcript,
            "words": [
                {
                    "word": w.word,
                    "confidence": round(w.confidence, 4),
                    "start": round(w.start, 3),
                    "end": round(w.end, 3),
                }
                for w in event.words
            ],
            "end_of_turn_confidence": round(event.end_of_turn_confidence, 4),
        }
        if event.trigger is not None:
            info["trigger"] = event.trigger
        return info

    def _error(self, event: StreamError) -> dict[str, Any]:
        """A failure of one span of audio (``channel`` set) is a ``Warning``: the stream
        goes on; any other failure is an ``Error``, which Flux's clients take as fatal."""
        if event.channel is not None:
            return {
                "type": "Warning",
                "request_id": self.request_id,
                "code": str(event.code).upper(),
                "description": event.message,
            }
        return {
            "type": "Error",
            "code": str(event.code).upper(),
            "description": event.message,
        }


def _thresholds(turns: TurnDetection) -> dict[str, Any]:
    thresholds: dict[str, Any] = {
        "eot_threshold": turns.eot_threshold,
        "eot_timeout_ms": turns.eot_timeout_ms,
    }
    if turns.eager_eot_threshold is not None:
        thresholds["eager_eot_threshold"] = turns.eager_eot_threshold
    return thresholds


def _reason(error: ValueError | ValidationError) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"thresholds.{where}: {first['msg']}" if where else str(first["msg"])
    return str(error)


def codec_for(items: Sequence[tuple[str, str]]) -> FluxCodec:
    """A connection's codec from its query; raises ``BadHandshake``."""
    return FluxCodec(parse_query(items))
