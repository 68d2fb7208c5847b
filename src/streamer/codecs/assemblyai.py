"""AssemblyAI's Universal-Streaming v3 API (``GET /v3/ws``) over the shared connection machine.

No I/O. :func:`parse_query` reads the upgrade request's query into ``StreamingParams``; a
``StreamingCodec`` per connection then turns it into the stream's ``start`` (its opening
input), AssemblyAI's messages into the machine's requests (binary audio, ``ForceEndpoint``
-> finalize, ``KeepAlive``, ``UpdateConfiguration``, ``Terminate`` -> finish and close) and
the stream's events into AssemblyAI's messages: ``Begin``, ``SpeechStarted``, ``Turn``,
``Termination`` (only after the client's ``Terminate``) and ``Error``, which the close code
equal to its ``error_code`` follows.

AssemblyAI reports a bad query after the upgrade (an ``Error`` with 3006 and that close
code), not as an HTTP status, so a malformed query here becomes the connection's one opening
input: a refusal the machine tells and closes on.

Turns: the codec speaks of a turn's words so far and of its end, whatever decides them.
Until a turn stage drives a route, a segment of the VAD is a turn: its interims are the
turn's partial ``Turn`` messages and its final the end of the turn (see :class:`TurnView`).
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamer.audio.formats import MAX_SAMPLE_RATE, AudioFormat, Encoding
from streamer.errors import ClientError, ErrorCode, InvalidJson, InvalidMessage
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
from streamer.protocol.connection import Mode
from streamer.protocol.inputs import Audio, Finish, Input, Invalid
from streamer.protocol.messages import (
    MAX_OPTION_MS,
    FinalizeRequest,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
    parse_start,
)

ENCODINGS: dict[str, tuple[Encoding, int]] = {
    "pcm_s16le": (Encoding.PCM, 16),
    "pcm_mulaw": (Encoding.MULAW, 8),
}
"""AssemblyAI's raw encodings the server takes: (encoding, bits per sample)."""

REFUSED_ENCODINGS = frozenset(("opus", "ogg_opus", "aac", "mp3", "flac", "wav", "webm"))
"""Compressed or containerised audio: refused, with a message saying what is taken."""

U3_MODELS = ("u3-rt-pro", "u3-pro", "universal-3")
"""Prefixes of the speech models whose turns AssemblyAI always formats."""

IGNORED_PARAMETERS = frozenset(
    (
        "language_code",
        "language_codes",
        "language_detection",
        "prompt",
        "agent_context",
        "previous_context_n_turns",
        "vad_threshold",
        "filter_profanity",
        "speaker_labels",
        "max_speakers",
        "domain",
        "voice_focus",
        "voice_focus_threshold",
        "noise_suppression_model",
        "noise_suppression_threshold",
        "continuous_partials",
        "interruption_delay",
        "mode",
        "formatted_finals",
        "word_finalization_max_wait_time",
        "session_heartbeat",
        "webhook_url",
    )
)
"""Accepted and ignored: the model decides these (any other unknown parameter too)."""

MODE = Mode(one_stream=True)
"""One stream per connection, and a client's mistake ends it, as AssemblyAI closes on an
``Error``; told first as an ``Error`` message, then the close code."""

SERVER_ERROR = 3005
INPUT_VALIDATION = 3006
CHUNK_DURATION = 3007
SESSION_EXPIRED = 3008
TOO_MANY_SESSIONS = 3009
TRY_LATER = 1013

ERROR_CODES: dict[ErrorCode | None, int] = {
    None: 1000,
    ErrorCode.OVERLOADED: TRY_LATER,
    ErrorCode.SHUTTING_DOWN: 1001,
    ErrorCode.SESSION_EXPIRED: SESSION_EXPIRED,
    ErrorCode.IDLE_TIMEOUT: SESSION_EXPIRED,
    ErrorCode.INTERNAL_ERROR: SERVER_ERROR,
    ErrorCode.MODEL_ERROR: SERVER_ERROR,
    ErrorCode.MODEL_CRASHED: SERVER_ERROR,
    ErrorCode.WORKER_CRASHED: SERVER_ERROR,
    ErrorCode.INFERENCE_TIMEOUT: SERVER_ERROR,
    ErrorCode.FALLING_BEHIND: SERVER_ERROR,
}
"""AssemblyAI's error (and close) code by the reason a connection ends; any other client
error is 3006 (input validation)."""

MIN_CHUNK_MS = 50.0
MAX_CHUNK_MS = 1000.0
"""AssemblyAI's bounds on one binary message of audio (3007 outside them)."""

DEFAULT_SESSION_SECONDS = 3 * 3600.0
"""A session's longest life where the server sets none (AssemblyAI's three hours)."""

_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_PUNCTUATION = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


class ChunkDuration(InvalidMessage):
    """A binary message outside the chunk bounds (AssemblyAI's 3007)."""


@dataclass(frozen=True, slots=True)
class StreamingParams:
    """The query of a ``/v3/ws`` upgrade, checked."""

    sample_rate: int = 16000
    encoding: str = "pcm_s16le"
    speech_model: str | None = None
    format_turns: bool = False
    end_of_turn_confidence_threshold: float | None = None
    min_turn_silence: int | None = None
    max_turn_silence: int | None = None
    keyterms_prompt: tuple[str, ...] = ()
    inactivity_timeout: int | None = None
    ignored: tuple[str, ...] = ()
    """Parameters that were accepted and have no effect here."""

    @property
    def always_formatted(self) -> bool:
        """The speech model formats its turns itself (one formatted end-of-turn Turn)."""
        model = self.speech_model or ""
        return model.startswith(U3_MODELS)

    def audio_format(self) -> AudioFormat:
        encoding, bits = ENCODINGS[self.encoding]
        return AudioFormat(1, self.sample_rate, bits, False, encoding)

    def start_request(self) -> StartRequest:
        """The stream's ``start``: partial turns need interims, word times for ``words``."""
        fmt = self.audio_format()
        body: dict[str, Any] = {
            "format": {
                "channels": 1,
                "sample_rate": fmt.sample_rate,
                "bit_depth": fmt.bit_depth,
                "is_float": False,
                "encoding": fmt.encoding,
            },
            "interim_results": True,
            "word_times": True,
        }
        if self.max_turn_silence is not None:
            # The silence that ends a turn whatever else is heard: the VAD's endpoint.
            body["vad"] = {"min_silence_ms": self.max_turn_silence}
        return parse_start(body)


class QueryError(InvalidMessage):
    """A query parameter AssemblyAI would refuse (3006 after the upgrade)."""


def _values(raw: str) -> str:
    """A JSON-array value (``["x"]``) of a scalar parameter: its single element."""
    text = raw.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, list) and len(parsed) == 1:
            return str(parsed[0])
    return text


def _boolean(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = _BOOLEANS.get(_values(raw).lower())
    if value is None:
        raise QueryError(f"{name} must be true or false, got {raw!r}")
    return value


def _number(query: Mapping[str, str], name: str, low: float, high: float) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(_values(raw))
    except ValueError:
        raise QueryError(f"{name} must be a number, got {raw!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise QueryError(f"{name} must be from {low:g} to {high:g}, got {raw!r}")
    return value


def _integer(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = _number(query, name, low, high)
    if value is None:
        return None
    if value != int(value):
        raise QueryError(f"{name} must be an integer, got {query[name]!r}")
    return int(value)


def _keyterms(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise QueryError("keyterms_prompt must be a JSON-encoded list of strings") from None
    if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
        raise QueryError("keyterms_prompt must be a JSON-encoded list of strings")
    return tuple(parsed)


def parse_query(items: Sequence[tuple[str, str]]) -> StreamingParams:
    """Check a ``/v3/ws`` query; unknown parameters are ignored. A malformed value raises
    ``QueryError`` (AssemblyAI's 3006)."""
    query = dict(items)
    encoding = _values(query.get("encoding", "pcm_s16le")).lower()
    if encoding not in ENCODINGS:
        kind = "is not supported here" if encoding in REFUSED_ENCODINGS else "is unknown"
        raise QueryError(f"encoding {encoding!r} {kind}; use pcm_s16le or pcm_mulaw (raw audio)")
    sample_rate = _integer(query, "sample_rate", 1, MAX_SAMPLE_RATE)
    if sample_rate is None:
        if "sample_rate" in query:
            raise QueryError("sample_rate must be a positive integer")
        sample_rate = 16000
    min_silence = _integer(query, "min_turn_silence", 0, MAX_OPTION_MS)
    if min_silence is None:
        min_silence = _integer(query, "min_end_of_turn_silence_when_confident", 0, MAX_OPTION_MS)
    params = StreamingParams(
        sample_rate=sample_rate,
        encoding=encoding,
        speech_model=_values(query["speech_model"]) if "speech_model" in query else None,
        format_turns=bool(_boolean(query, "format_turns")),
        end_of_turn_confidence_threshold=_number(
            query, "end_of_turn_confidence_threshold", 0.0, 1.0
        ),
        min_turn_silence=min_silence,
        max_turn_silence=_integer(query, "max_turn_silence", 0, MAX_OPTION_MS),
        keyterms_prompt=_keyterms(query.get("keyterms_prompt")),
        inactivity_timeout=_integer(query, "inactivity_timeout", 5, 3600),
        ignored=tuple(sorted(set(query) & IGNORED_PARAMETERS)),
    )
    try:
        params.audio_format().validate()
        params.start_request()
    except ClientError as error:
        raise QueryError(error.message) from None
    return params


UPDATABLE = {
    "end_of_turn_confidence_threshold": float,
    "min_turn_silence": int,
    "min_end_of_turn_silence_when_confident": int,
    "max_turn_silence": int,
    "format_turns": bool,
    "keyterms_prompt": list,
}
"""``UpdateConfiguration`` fields this server keeps (others are accepted and ignored)."""


@dataclass(slots=True)
class TurnView:
    """The open turn as AssemblyAI numbers it: its order, and whether it has words yet.

    The codec's only notion of a turn. It takes transport-neutral facts (words of the turn
    so far; the turn ended, with its text, words and confidence), so that whatever decides
    turns (the VAD's segments today, a turn stage tomorrow) feeds the same two calls.
    """

    order: int = 0
    started: bool = False


@dataclass(frozen=True, slots=True)
class TurnWords:
    """A turn's text and words so far (times in seconds of the stream)."""

    text: str
    words: tuple[Mapping[str, Any], ...] = ()
    confidence: float = 1.0


class StreamingCodec:
    """One ``/v3/ws`` connection's codec: AssemblyAI's messages in and out."""

    def __init__(
        self,
        params: StreamingParams | None,
        *,
        refused: QueryError | None = None,
        max_session_seconds: float = 0.0,
        min_chunk_ms: float = MIN_CHUNK_MS,
        max_chunk_ms: float = MAX_CHUNK_MS,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``refused``: the query was malformed; the connection says so and closes.
        ``max_session_seconds`` (0: AssemblyAI's three hours) sets ``Begin.expires_at``."""
        self.params = params or StreamingParams()
        self.opening: tuple[Input, ...] = (
            (Invalid(refused),) if refused is not None else (self.params.start_request(),)
        )
        self.session_id = str(uuid.uuid4())
        self.turn = TurnView()
        self.terminated = False
        self._format_turns = self.params.format_turns
        self._session_seconds = max_session_seconds or DEFAULT_SESSION_SECONDS
        self._min_chunk = min_chunk_ms
        self._max_chunk = max_chunk_ms
        self._wall_clock = wall_clock
        self._clock = clock
        self._opened = clock()
        fmt = self.params.audio_format()
        self._bytes_per_ms = fmt.frame_bytes * fmt.sample_rate / 1000
        self._held = b""
        self._refusal: int | None = None
        self.updates: dict[str, Any] = {}
        """The configuration the client updated live (its last value of each field)."""

    # Inbound.

    def decode_text(self, text: str) -> Input:
        """A text frame: ``ForceEndpoint``, ``KeepAlive``, ``UpdateConfiguration`` or
        ``Terminate``."""
        try:
            body = json.loads(text)
        except ValueError as error:
            raise InvalidJson(f"message is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise InvalidMessage("message must be a JSON object with a 'type'")
        kind = body.get("type")
        if kind == "Terminate":
            self.terminated = True
            held, self._held = self._held, b""
            return Finish(held) if held else StopRequest(request="stop", disconnect=True)
        if self._held:  # a short chunk that was not the last one
            self._held_refused()
        if kind == "ForceEndpoint":
            return FinalizeRequest(request="finalize")
        if kind == "KeepAlive":
            return KeepaliveRequest(request="keepalive")
        if kind == "UpdateConfiguration":
            self._update(body)
            return KeepaliveRequest(request="keepalive")
        raise InvalidMessage(
            f"unknown message type {kind!r}; expected one of "
            "ForceEndpoint, KeepAlive, UpdateConfiguration, Terminate"
        )

    def decode_bytes(self, data: bytes) -> Input:
        """A binary frame: 50 to 1000 ms of audio. One shorter chunk is held, for a client
        may send its remainder just before ``Terminate``; any other message after it is
        3007."""
        if self._held:
            self._held_refused()
        ms = len(data) / self._bytes_per_ms
        if ms > self._max_chunk:
            self._refusal = CHUNK_DURATION
            raise ChunkDuration(
                f"Audio chunk of {ms:.0f} ms is too long: send between "
                f"{self._min_chunk:g} and {self._max_chunk:g} ms of audio per message"
            )
        if ms < self._min_chunk:
            self._held = data
            return KeepaliveRequest(request="keepalive")
        return Audio(data)

    def _held_refused(self) -> None:
        ms = len(self._held) / self._bytes_per_ms
        self._held = b""
        self._refusal = CHUNK_DURATION
        raise ChunkDuration(
            f"Audio chunk of {ms:.0f} ms is too short: send between "
            f"{self._min_chunk:g} and {self._max_chunk:g} ms of audio per message"
        )

    def _update(self, body: Mapping[str, Any]) -> None:
        for name, kind in UPDATABLE.items():
            if name not in body or body[name] is None:
                continue
            value = body[name]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            ok = (
                isinstance(value, bool)
                if kind is bool
                else number
                if kind in (int, float)
                else isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
            if not ok:
                raise InvalidMessage(f"UpdateConfiguration: {name} has the wrong type")
            self.updates[name] = value
        if "format_turns" in self.updates:
            self._format_turns = bool(self.updates["format_turns"])

    # Outbound.

    def encode(self, event: Event) -> list[str]:
        """The AssemblyAI messages for one event (perhaps none)."""
        return [json.dumps(m, ensure_ascii=False, allow_nan=False) for m in self.messages(event)]

    def messages(self, event: Event) -> list[dict[str, Any]]:
        """``encode``, as dicts."""
        if isinstance(event, Ready):
            self.session_id = event.session_id
            expires = int(self._wall_clock() + self._session_seconds)
            begin: dict[str, Any] = {
                "type": "Begin",
                "id": _uuid(event.session_id),
                "expires_at": expires,
            }
            if self.params.speech_model is not None:
                # Reported back as asked; the server's own model runs whatever it is.
                begin["configuration"] = {"model": self.params.speech_model}
            return [begin]
        if isinstance(event, SpeechStarted):
            return [{"type": "SpeechStarted", "timestamp": _ms(event.time)}]
        if isinstance(event, SegmentResult):
            words = _turn_words(event.output)
            if words is None:
                return []
            if event.final:
                return self.turn_ended(words)
            return self.turn_words(words)
        if isinstance(event, SpeechEnded | Finalized):
            return []
        if isinstance(event, StreamError):
            return self._error(event)
        if isinstance(event, Done):
            if not self.terminated:
                return []  # Termination answers Terminate only (clients end on it)
            return [
                {
                    "type": "Termination",
                    "audio_duration_seconds": round(event.audio_seconds),
                    "session_duration_seconds": round(self._clock() - self._opened),
                }
            ]
        raise TypeError(f"no AssemblyAI form for {type(event).__name__}")

    def turn_words(self, words: TurnWords) -> list[dict[str, Any]]:
        """A partial ``Turn``: the open turn's words so far."""
        self.turn.started = True
        return [self._turn(words, end=False, formatted=False, confidence=0.0)]

    def turn_ended(self, words: TurnWords, confidence: float = 1.0) -> list[dict[str, Any]]:
        """The end-of-turn ``Turn``s: unformatted, then (``format_turns``) formatted, both of
        one ``turn_order``; a model that formats its turns itself sends the formatted one
        alone. ``utterance`` is filled on the first, so that clients can start early."""
        if self.params.always_formatted and not self._format_turns:
            sent = [self._turn(words, end=True, formatted=True, confidence=confidence)]
        else:
            sent = [self._turn(words, end=True, formatted=False, confidence=confidence)]
            if self._format_turns:
                sent.append(self._turn(words, end=True, formatted=True, confidence=confidence))
        sent[0]["utterance"] = words.text.strip()
        self.turn = TurnView(order=self.turn.order + 1)
        return sent

    def _turn(
        self, words: TurnWords, *, end: bool, formatted: bool, confidence: float
    ) -> dict[str, Any]:
        shape = (lambda text: text) if formatted else unformatted
        items = [
            {
                "start": _ms(float(w["start"])),
                "end": _ms(float(w["end"])),
                "confidence": float(w["confidence"]),
                "text": shape(str(w["word"]).strip()),
                "word_is_final": end,
            }
            for w in words.words
        ]
        items = [w for w in items if w["text"]]
        return {
            "type": "Turn",
            "turn_order": self.turn.order,
            "turn_is_formatted": formatted,
            "end_of_turn": end,
            "transcript": shape(words.text.strip()),
            "end_of_turn_confidence": confidence,
            "words": items,
            "utterance": "",
        }

    def _error(self, event: StreamError) -> list[dict[str, Any]]:
        if event.channel is not None:
            # One span of audio failed (the model on one segment); the stream goes on, and
            # AssemblyAI's clients end the session on any Error: no Turn for that span.
            return []
        code = self.error_code(ErrorCode(event.code))
        return [{"type": "Error", "error_code": code, "error": event.message}]

    def error_code(self, code: ErrorCode | None) -> int:
        """The ``error_code`` (and close code) of a connection that ends for ``code``."""
        if code is None:
            return 1000
        if self._refusal is not None and code is ErrorCode.INVALID_MESSAGE:
            return self._refusal
        return ERROR_CODES.get(code, INPUT_VALIDATION)

    def close_code(self, code: ErrorCode | None) -> int:
        """The close code: the ``Error``'s code, 1000 for a normal end."""
        return self.error_code(code)


def unformatted(text: str) -> str:
    """AssemblyAI's unformatted text: lower case, no punctuation (apostrophes in words
    kept), single spaces."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _uuid(session_id: str) -> str:
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        return session_id


def _turn_words(output: Mapping[str, Any]) -> TurnWords | None:
    """The model's text and words, or None when it heard nothing (no Turn is sent)."""
    text = output.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    words: list[Mapping[str, Any]] = []
    raw = output.get("words")
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, Mapping) or not isinstance(item.get("word"), str):
            continue
        try:
            words.append(
                {
                    "word": item["word"],
                    "start": float(item.get("start", 0.0)),
                    "end": float(item.get("end", 0.0)),
                    "confidence": float(item.get("confidence", item.get("probability", 1.0))),
                }
            )
        except (TypeError, ValueError):
            continue
    return TurnWords(text, tuple(words))


def codec_for(
    items: Sequence[tuple[str, str]],
    *,
    max_session_seconds: float = 0.0,
    min_chunk_ms: float = MIN_CHUNK_MS,
    max_chunk_ms: float = MAX_CHUNK_MS,
) -> StreamingCodec:
    """A connection's codec from its query; a malformed query makes a codec that refuses
    (3006) once the connection is open, as AssemblyAI does."""
    try:
        params: StreamingParams | None = parse_query(items)
        refused = None
    except QueryError as error:
        params, refused = None, error
    return StreamingCodec(
        params,
        refused=refused,
        max_session_seconds=max_session_seconds,
        min_chunk_ms=min_chunk_ms,
        max_chunk_ms=max_chunk_ms,
    )


__all__ = [
    "CHUNK_DURATION",
    "ENCODINGS",
    "IGNORED_PARAMETERS",
    "INPUT_VALIDATION",
    "MODE",
    "ChunkDuration",
    "QueryError",
    "StreamingCodec",
    "StreamingParams",
    "TurnView",
    "TurnWords",
    "codec_for",
    "parse_query",
    "unformatted",
]
