"""Deepgram's live transcription API (``GET /v1/listen``) over the shared connection machine.

No I/O. :func:`parse_query` reads the upgrade request's query into ``ListenParams`` (a
malformed value is ``BadHandshake``: HTTP 400 naming the parameter). A ``ListenCodec`` per
connection then turns the query into the stream's ``start`` (its one opening input),
Deepgram's JSON messages into the machine's requests (``KeepAlive`` -> keepalive,
``Finalize`` -> finalize, which is not terminal, ``CloseStream`` -> stop and close), and
the stream's events into Deepgram's messages (``Results``, ``SpeechStarted``,
``UtteranceEnd``, ``Metadata`` at the end, ``Error``). It keeps the little state Deepgram's
shapes need: the request id, the model, the sha256 and length of the audio received.

Several channels with ``multichannel=false`` are mixed down to one here, with the core's
own decoder, so that the stream sees mono audio.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streamer.audio.decode import Decoder
from streamer.audio.formats import MAX_CHANNELS, AudioFormat, Encoding
from streamer.codecs.query import Query, format_body, typed_message
from streamer.errors import (
    ENDINGS,
    BadHandshake,
    ClientError,
    ErrorCode,
    InvalidMessage,
)
from streamer.events import (
    Done,
    Event,
    Finalized,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
)
from streamer.protocol.inputs import Audio, Input
from streamer.protocol.messages import (
    MAX_OPTION_MS,
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
    parse_start,
)

ENCODINGS: dict[str, tuple[Encoding, int]] = {
    "linear16": (Encoding.PCM, 16),
    "linear32": (Encoding.PCM, 32),
    "mulaw": (Encoding.MULAW, 8),
    "alaw": (Encoding.ALAW, 8),
}
"""Deepgram's raw encodings the server takes: (encoding, bits per sample)."""

REFUSED_ENCODINGS = frozenset(
    ("flac", "opus", "ogg-opus", "speex", "amr-nb", "amr-wb", "g729", "mp3", "aac", "wav")
)
"""Compressed or containerised audio: refused, with a message saying what is taken."""

IGNORED_PARAMETERS = frozenset(
    (
        "language",
        "model",
        "version",
        "punctuate",
        "smart_format",
        "keyterm",
        "keywords",
        "tag",
        "numerals",
        "profanity_filter",
        "diarize",
        "diarize_model",
        "dictation",
        "filler_words",
        "redact",
        "replace",
        "search",
        "detect_entities",
        "mip_opt_out",
        "extra",
        "callback",
        "callback_method",
        "language_hint",
    )
)
"""Accepted (booleans among them checked) and ignored: the model decides these."""

_BOOLEAN_IGNORED = ("punctuate", "smart_format", "numerals", "profanity_filter", "diarize")

EXTENSION_KEY = "streamer_output"
"""Where a ``Results`` message carries the model's raw output when it has no text."""

INTERIM_SECONDS = 1.0
"""Segment audio between interim ``Results``: about Deepgram's own cadence (its examples
show one a second). Half a second doubled the decodes of a stream that asks for interims,
which on a loaded CPU delays the finals a voice agent waits on (docs/benchmarks.md)."""

CLOSE_CODES: dict[ErrorCode | None, int] = {
    None: 1000,
    ErrorCode.IDLE_TIMEOUT: 1011,  # Deepgram's NET-0001
    ErrorCode.INTERNAL_ERROR: 1011,  # NET-0000
    ErrorCode.INVALID_FORMAT: 1008,  # DATA-0000: the audio cannot be decoded
    ErrorCode.INCOMPLETE_FRAME: 1008,
    ErrorCode.OVERLOADED: 1013,
    ErrorCode.SHUTTING_DOWN: 1001,
}
"""Deepgram's close codes, by the reason a connection ends (others as ``errors.ENDINGS``)."""

DEEPGRAM_CODES: dict[str, str] = {
    ErrorCode.IDLE_TIMEOUT: "NET-0001",
    ErrorCode.INTERNAL_ERROR: "NET-0000",
    ErrorCode.INVALID_FORMAT: "DATA-0000",
    ErrorCode.INCOMPLETE_FRAME: "DATA-0000",
}
"""Deepgram's error codes for the errors it documents."""

IDLE_DESCRIPTION = (
    "Deepgram did not receive audio data or a text message within the timeout window."
)


def close_code(code: ErrorCode | None) -> int:
    """The close code a connection that ends for ``code`` gets."""
    return CLOSE_CODES.get(code, int(ENDINGS[code].close_code))


@dataclass(frozen=True, slots=True)
class ListenParams:
    """The query of a ``/v1/listen`` upgrade, checked."""

    encoding: str
    sample_rate: int
    channels: int = 1
    multichannel: bool = False
    interim_results: bool = False
    endpointing: int | None = None
    """Milliseconds of silence that end an utterance; None: the server's default."""
    endpointing_off: bool = False
    utterance_end_ms: int | None = None
    vad_events: bool = False
    language: str | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()
    keyterms: tuple[str, ...] = field(default=())

    @property
    def mixed_down(self) -> bool:
        """Several channels recognised as one."""
        return self.channels > 1 and not self.multichannel

    @property
    def stream_channels(self) -> int:
        """The channels the stream (and ``channel_index``) counts."""
        return 1 if self.mixed_down else self.channels

    def audio_format(self) -> AudioFormat:
        """The format of the audio the client sends."""
        encoding, bits = ENCODINGS[self.encoding]
        return AudioFormat(self.channels, self.sample_rate, bits, False, encoding)

    def start_request(self) -> StartRequest:
        """The stream's ``start``, as the core takes it."""
        fmt = self.audio_format()
        if self.mixed_down:  # the codec hands over mono float samples
            fmt = AudioFormat(1, self.sample_rate, 32, True, Encoding.PCM)
        body: dict[str, Any] = {
            "format": format_body(fmt),
            "interim_results": self.interim_results,
            "interim_interval": INTERIM_SECONDS,
            # Deepgram's results carry words: ask the model for their times.
            "word_times": True,
        }
        if self.endpointing is not None:
            body["vad"] = {"min_silence_ms": self.endpointing}
        return parse_start(body)


def _refuse(parameter: str, message: str) -> BadHandshake:
    text = f"{parameter}: {message}"
    body = {
        "err_code": "INVALID_QUERY_PARAMETER",
        "err_msg": text,
        "parameter": parameter,
        "request_id": str(uuid.uuid4()),
    }
    return BadHandshake(text, parameter, body)


def parse_query(items: Sequence[tuple[str, str]]) -> ListenParams:
    """Check a ``/v1/listen`` query (every item, repeated ones included).

    Unknown parameters are ignored, and so are those the model cannot honour; a
    malformed value raises ``BadHandshake`` naming the parameter.
    """
    query = Query(items, _refuse)
    encoding, sample_rate = query.raw_audio(
        ENCODINGS,
        REFUSED_ENCODINGS,
        "is required: the server takes raw audio only "
        f"({', '.join(ENCODINGS)}), not containerised audio",
    )
    channels = query.integer("channels", 1, MAX_CHANNELS) or 1
    endpointing: int | None = None
    off = False
    raw = query.get("endpointing")
    if raw is not None and raw.strip().lower() == "false":
        off = True
    elif raw is not None and raw.strip().lower() != "true":
        endpointing = query.integer("endpointing", 1, MAX_OPTION_MS)
    utterance_end = query.integer("utterance_end_ms", 1, MAX_OPTION_MS)
    for name in _BOOLEAN_IGNORED:
        query.boolean(name)
    params = ListenParams(
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        multichannel=query.boolean("multichannel"),
        interim_results=query.boolean("interim_results"),
        endpointing=endpointing,
        endpointing_off=off,
        utterance_end_ms=utterance_end,
        vad_events=query.boolean("vad_events"),
        language=query.get("language"),
        model=query.get("model"),
        tags=query.all("tag"),
        keyterms=query.all("keyterm") + query.all("keywords"),
    )
    try:
        params.audio_format().validate()
        params.start_request()
    except ClientError as error:
        parameter = "sample_rate" if "sample_rate" in error.message else "encoding"
        raise _refuse(parameter, error.message) from None
    return params


_MESSAGES: dict[str, Callable[[], Input]] = {
    "KeepAlive": lambda: KeepaliveRequest(request="keepalive"),
    "Finalize": lambda: FinalizeRequest(request="finalize"),
    "CloseStream": lambda: StopRequest(request="stop", disconnect=True),
}


def _variant(code: str) -> str:
    if code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE):
        return "SchemaError"
    return code


class ListenCodec:
    """One ``/v1/listen`` connection's codec: Deepgram's messages in and out."""

    def __init__(self, params: ListenParams, *, created: datetime | None = None) -> None:
        self.params = params
        self.opening: tuple[Input, ...] = (params.start_request(),)
        self.request_id = str(uuid.uuid4())
        self.model = "unknown"
        self._created = (created or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        self._sha = hashlib.sha256()
        self._mixer = Decoder(params.audio_format()) if params.mixed_down else None
        self._utterance_open: set[int] = set()
        self._last_word_end: dict[int, float] = {}

    # Inbound.

    def decode_text(self, text: str) -> Input:
        """A text frame: ``KeepAlive``, ``Finalize`` or ``CloseStream``."""
        body = typed_message(text)
        kind = body.get("type")
        make = _MESSAGES.get(kind) if isinstance(kind, str) else None
        if make is None:
            raise InvalidMessage(
                f"unknown message type {kind!r}; expected one of {', '.join(_MESSAGES)}"
            )
        return make()

    def decode_bytes(self, data: bytes) -> Input:
        """A binary frame: audio (mixed down to mono float samples when asked). An empty
        frame ends the stream, as Deepgram's older clients send it."""
        if not data:
            return StopRequest(request="stop", disconnect=True)
        self._sha.update(data)
        if self._mixer is None:
            return Audio(data)
        block = self._mixer.feed(data)
        mono = block.mean(axis=0, dtype=np.float32)
        return Audio(np.ascontiguousarray(mono, dtype="<f4").tobytes())

    # Outbound.

    def encode(self, event: Event) -> list[str]:
        """The Deepgram messages for one event (perhaps none)."""
        return [json.dumps(m, ensure_ascii=False, allow_nan=False) for m in self.messages(event)]

    def messages(self, event: Event) -> list[dict[str, Any]]:
        """``encode``, as dicts."""
        p = self.params
        if isinstance(event, Ready):
            self.request_id = event.session_id
            self.model = event.model
            return []
        if isinstance(event, SegmentResult):
            return self._results(event)
        if isinstance(event, Finalized):
            if event.forced:
                return []
            empty = SegmentResult(event.channel, event.time, event.time, True, {}, True)
            return self._results(empty)
        if isinstance(event, SpeechStarted):
            self._utterance_open.add(event.channel)
            if not p.vad_events:
                return []
            return [
                {
                    "type": "SpeechStarted",
                    "channel": self._channel(event.channel),
                    "timestamp": event.time,
                }
            ]
        if isinstance(event, SpeechEnded):
            return []
        if isinstance(event, StreamError):
            return [self._error(event)]
        if isinstance(event, Done):
            return [self._metadata(event)]
        raise TypeError(f"no Deepgram form for {type(event).__name__}")

    def _channel(self, index: int) -> list[int]:
        return [index, self.params.stream_channels]

    def _model_info(self) -> dict[str, str]:
        return {"name": self.model, "version": "streamer", "arch": self.model}

    @property
    def model_uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamer:{self.model}"))

    def _results(self, event: SegmentResult) -> list[dict[str, Any]]:
        output = dict(event.output)
        text = output.get("text")
        words = _words(output.get("words"))
        confidence = _confidence(output, words)
        ends_utterance = event.final and event.channel in self._utterance_open
        speech_final = ends_utterance and not event.forced and not self.params.endpointing_off
        results: dict[str, Any] = {
            "type": "Results",
            "channel_index": self._channel(event.channel),
            "duration": round(event.end - event.start, 6),
            "start": event.start,
            "is_final": event.final,
            "speech_final": speech_final,
            "from_finalize": event.forced,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text.strip() if isinstance(text, str) else "",
                        "confidence": confidence,
                        "words": words,
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": self._model_info(),
                "model_uuid": self.model_uuid,
            },
        }
        if not isinstance(text, str) and output:
            results[EXTENSION_KEY] = output
        messages = [results]
        if words:
            self._last_word_end[event.channel] = words[-1]["end"]
        elif isinstance(text, str) and text.strip():
            self._last_word_end[event.channel] = event.end
        if ends_utterance:
            self._utterance_open.discard(event.channel)
            if self.params.utterance_end_ms is not None:
                messages.append(
                    {
                        "type": "UtteranceEnd",
                        "channel": self._channel(event.channel),
                        "last_word_end": self._last_word_end.get(event.channel, event.end),
                    }
                )
        return messages

    def _error(self, event: StreamError) -> dict[str, Any]:
        description = IDLE_DESCRIPTION if event.code == ErrorCode.IDLE_TIMEOUT else event.message
        body: dict[str, Any] = {
            "type": "Error",
            "variant": _variant(event.code),
            "description": description,
            "code": DEEPGRAM_CODES.get(event.code, event.code),
            "message": event.message,
            "streamer_code": event.code,
        }
        if event.channel is not None:
            body["channel_index"] = self._channel(event.channel)
        return body

    def _metadata(self, event: Done) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha.hexdigest(),
            "created": self._created,
            "duration": event.audio_seconds,
            "channels": self.params.channels,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: self._model_info()},
        }


def _words(raw: object) -> list[dict[str, Any]]:
    """The model's words (already in stream time: the pipeline moves them) as Deepgram's."""
    if not isinstance(raw, list):
        return []
    words: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("word"), str):
            continue
        try:
            start = round(float(item.get("start", 0.0)), 6)
            end = round(float(item.get("end", 0.0)), 6)
            confidence = float(item.get("confidence", item.get("probability", 1.0)))
        except (TypeError, ValueError):
            continue
        text = item["word"].strip()
        words.append(
            {
                "word": text.lower().strip(".,!?;:\"'"),
                "start": start,
                "end": end,
                "confidence": confidence,
                "punctuated_word": text,
            }
        )
    return words


def _confidence(output: Mapping[str, Any], words: Sequence[Mapping[str, Any]]) -> float:
    value = output.get("confidence")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if words:
        return round(sum(float(w["confidence"]) for w in words) / len(words), 6)
    return 1.0 if isinstance(output.get("text"), str) and output["text"].strip() else 0.0


def codec_for(items: Sequence[tuple[str, str]]) -> ListenCodec:
    """A connection's codec from its query; raises ``BadHandshake``."""
    return ListenCodec(parse_query(items))


__all__ = [
    "CLOSE_CODES",
    "ENCODINGS",
    "EXTENSION_KEY",
    "IGNORED_PARAMETERS",
    "ListenCodec",
    "ListenParams",
    "close_code",
    "codec_for",
    "parse_query",
]
