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

Turns are the stream's turn detection (``docs/turns.md``): the end-of-turn model decides
when a pause ends a turn. ``StartOfTurn`` is ``SpeechStarted``; ``Update`` a partial
``Turn``; ``EagerEndOfTurn`` a partial ``Turn`` with its ``utterance`` filled (clients
start their reply early on it); ``EndOfTurn`` the end-of-turn ``Turn``s. The VAD's segments
are not turns here and are not sent.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from streamer.audio.formats import MAX_SAMPLE_RATE, AudioFormat, Encoding
from streamer.codecs.query import format_body, typed_message
from streamer.errors import STREAM_LIMIT, ClientError, ErrorCode, InvalidMessage
from streamer.events import (
    Done,
    Event,
    Finalized,
    Ready,
    SegmentResult,
    SpeechEnded,
    SpeechStarted,
    StreamError,
    Turn,
)
from streamer.protocol.connection import Mode
from streamer.protocol.inputs import Audio, Finish, Input, Invalid, Steer
from streamer.protocol.messages import (
    MAX_OPTION_MS,
    KeepaliveRequest,
    StartRequest,
    StopRequest,
    TurnDetection,
    parse_start,
)
from streamer.turn.stage import ForceEnd

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
error is 3006 (input validation). A concurrent-stream limit (``StreamLimit``) is
``overloaded`` too, but AssemblyAI's 3009 (too many concurrent sessions); 1013 is left to
a server that is behind (its backlog, or its measured delays)."""

MIN_CHUNK_MS = 50.0
MAX_CHUNK_MS = 1000.0
"""AssemblyAI's bounds on one binary message of audio (3007 outside them)."""

DEFAULT_SESSION_SECONDS = 3 * 3600.0
"""A session's longest life where the server sets none (AssemblyAI's three hours)."""

DEFAULT_MAX_TURN_SILENCE_MS = 1280
"""AssemblyAI's default ``max_turn_silence``: a pause this long ends the turn."""
EAGER_MARGIN = 0.2
"""The early end is announced this far below the end-of-turn threshold."""
EOT_RANGE = (0.5, 0.9)
EAGER_MIN = 0.3
TIMEOUT_RANGE = (500, 10_000)
MIN_SILENCE_RANGE = (0, 10_000)
"""``TurnDetection``'s bounds: AssemblyAI's values outside them are brought inside."""
INACTIVITY_RANGE = (5, 3600)
"""AssemblyAI's bounds on ``inactivity_timeout`` (seconds); outside them: 3006."""
INACTIVITY_MESSAGE = "no audio for {seconds} s (inactivity_timeout): the session is terminated"


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


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

    def turn_detection(self) -> TurnDetection:
        """The stream's turn detection, from AssemblyAI's parameters, within its bounds:
        ``end_of_turn_confidence_threshold`` is the end-of-turn threshold (0.7 unset),
        the early end comes ``EAGER_MARGIN`` below it, ``min_turn_silence`` the least
        pause after which the model's answer may end the turn (unset: none), and
        ``max_turn_silence`` the pause that ends a turn whatever the model says."""
        threshold = self.end_of_turn_confidence_threshold
        eot = 0.7 if threshold is None else _clamp(threshold, *EOT_RANGE)
        eager = round(max(EAGER_MIN, eot - EAGER_MARGIN), 3)
        silence = self.max_turn_silence
        timeout = DEFAULT_MAX_TURN_SILENCE_MS if silence is None else silence
        return TurnDetection(
            eot_threshold=eot,
            eager_eot_threshold=min(eager, eot),
            eot_timeout_ms=int(_clamp(timeout, *TIMEOUT_RANGE)),
            min_end_silence_ms=int(_clamp(self.min_turn_silence or 0, *MIN_SILENCE_RANGE)),
        )

    def start_request(self) -> StartRequest:
        """The stream's ``start``: turn detection, word times for ``words``."""
        fmt = self.audio_format()
        body: dict[str, Any] = {
            "format": format_body(fmt),
            "word_times": True,
            "turn_detection": self.turn_detection().model_dump(),
            "segments": False,  # the turns carry the transcript: no work for segments
        }
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
        inactivity_timeout=_integer(query, "inactivity_timeout", *INACTIVITY_RANGE),
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
    """The open turn as AssemblyAI numbers it: its order, and whether its early end (and
    so its ``utterance``) was sent."""

    order: int = 0
    eager_sent: bool = False


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
        self.inactive = False
        """The session ended for ``inactivity_timeout``."""
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
        timeout = self.params.inactivity_timeout
        self._inactivity = None if refused is not None or timeout is None else float(timeout)
        self._inactive_at = self._opened + (self._inactivity or 0.0)
        self._heard_at: float | None = None
        self.updates: dict[str, Any] = {}
        """The configuration the client updated live (its last value of each field)."""

    # Inbound.

    def decode_text(self, text: str) -> Input:
        """A text frame: ``ForceEndpoint``, ``KeepAlive``, ``UpdateConfiguration`` or
        ``Terminate``."""
        self._heard_at = self._clock()
        body = typed_message(text)
        kind = body.get("type")
        if kind == "Terminate":
            return self._terminate()
        if self._held:  # a short chunk that was not the last one
            self._held_refused()
        if kind == "ForceEndpoint":
            return Steer(ForceEnd())
        if kind == "KeepAlive":
            return KeepaliveRequest(request="keepalive")
        if kind == "UpdateConfiguration":
            return self._update(body)
        raise InvalidMessage(
            f"unknown message type {kind!r}; expected one of "
            "ForceEndpoint, KeepAlive, UpdateConfiguration, Terminate"
        )

    def decode_bytes(self, data: bytes) -> Input:
        """A binary frame: 50 to 1000 ms of audio. One shorter chunk is held, for a client
        may send its remainder just before ``Terminate``; any other message after it is
        3007."""
        self._heard_at = now = self._clock()
        self._inactive_at = now + (self._inactivity or 0.0)
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

    def timeout(self) -> float | None:
        """Seconds the client may still go without sending audio (``inactivity_timeout``;
        None: no limit, or the session is ending). Asked each time the server waits for a
        message: time the server spent on the last one is not the client's."""
        if self._inactivity is None or self.terminated:
            return None
        now = self._clock()
        if self._heard_at is not None:
            self._inactive_at += now - self._heard_at
            self._heard_at = None
        return self._inactive_at - now

    def timed_out(self) -> Input:
        """The session ends for inactivity as AssemblyAI documents it (the session is
        terminated): as on the client's ``Terminate``, every turn is flushed, then
        ``Termination``, then close 1000."""
        self.inactive = True
        return self._terminate()

    def _terminate(self) -> Input:
        """Every turn flushed (with a short chunk still held), ``Termination``, close."""
        self.terminated = True
        held, self._held = self._held, b""
        return Finish(held) if held else StopRequest(request="stop", disconnect=True)

    def _held_refused(self) -> None:
        ms = len(self._held) / self._bytes_per_ms
        self._held = b""
        self._refusal = CHUNK_DURATION
        raise ChunkDuration(
            f"Audio chunk of {ms:.0f} ms is too short: send between "
            f"{self._min_chunk:g} and {self._max_chunk:g} ms of audio per message"
        )

    def _update(self, body: Mapping[str, Any]) -> Input:
        """Keep what changed; new turn thresholds are handed to the stream."""
        before = self.params
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
        updates = self.updates
        if "format_turns" in updates:
            self._format_turns = bool(updates["format_turns"])
        silence = updates.get(
            "min_turn_silence", updates.get("min_end_of_turn_silence_when_confident")
        )
        self.params = replace(
            self.params,
            end_of_turn_confidence_threshold=updates.get(
                "end_of_turn_confidence_threshold", before.end_of_turn_confidence_threshold
            ),
            min_turn_silence=before.min_turn_silence if silence is None else int(silence),
            max_turn_silence=(
                int(updates["max_turn_silence"])
                if "max_turn_silence" in updates
                else before.max_turn_silence
            ),
        )
        turns = self.params.turn_detection()
        if turns != before.turn_detection():
            return Steer(turns)
        return KeepaliveRequest(request="keepalive")

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
        if isinstance(event, Turn):
            return self._turn_event(event)
        if isinstance(event, SegmentResult | SpeechStarted | SpeechEnded | Finalized):
            return []  # the VAD's segments: turns speak for them here
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

    def _turn_event(self, event: Turn) -> list[dict[str, Any]]:
        words = TurnWords(
            event.transcript,
            tuple(
                {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                for w in event.words
            ),
        )
        confidence = round(event.end_of_turn_confidence, 4)
        kind = event.event
        if kind == "StartOfTurn":
            return [{"type": "SpeechStarted", "timestamp": _ms(event.audio_window_start)}]
        if kind == "Update":
            return self.turn_words(words, confidence)
        if kind == "EagerEndOfTurn":
            return self.turn_words(words, confidence, eager=True)
        if kind == "EndOfTurn":
            return self.turn_ended(words, confidence)
        return []  # TurnResumed: the partials go on

    def turn_words(
        self, words: TurnWords, confidence: float = 0.0, *, eager: bool = False
    ) -> list[dict[str, Any]]:
        """A partial ``Turn``: the open turn's words so far (none while it has none). At
        an early end its ``utterance`` is filled, so that clients can start a reply."""
        if not words.text.strip():
            return []
        sent = self._turn(words, end=False, formatted=False, confidence=confidence)
        if eager:
            sent["utterance"] = words.text.strip()
            self.turn.eager_sent = True
        return [sent]

    def turn_ended(self, words: TurnWords, confidence: float = 1.0) -> list[dict[str, Any]]:
        """The end-of-turn ``Turn``s: unformatted, then (``format_turns``) formatted, both of
        one ``turn_order``; a model that formats its turns itself sends the formatted one
        alone. ``utterance`` is filled on the first unless the early end had it. A turn
        that ends with no words (noise) sends nothing and keeps its order for the next."""
        if not words.text.strip():
            self.turn = TurnView(order=self.turn.order)
            return []
        if self.params.always_formatted and not self._format_turns:
            sent = [self._turn(words, end=True, formatted=True, confidence=confidence)]
        else:
            sent = [self._turn(words, end=True, formatted=False, confidence=confidence)]
            if self._format_turns:
                sent.append(self._turn(words, end=True, formatted=True, confidence=confidence))
        if not self.turn.eager_sent:
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
            # One span of audio failed (the recognizer on a turn); the stream goes on, and
            # AssemblyAI's clients end the session on any Error: the turn keeps its text.
            return []
        if event.reason == STREAM_LIMIT:
            self._refusal = TOO_MANY_SESSIONS  # a concurrent-stream limit, not a busy server
        code = self.error_code(ErrorCode(event.code))
        return [{"type": "Error", "error_code": code, "error": event.message}]

    def error_code(self, code: ErrorCode | None) -> int:
        """The ``error_code`` (and close code) of a connection that ends for ``code``."""
        if code is None:
            return 1000
        refused = self._refusal
        if refused == CHUNK_DURATION and code is ErrorCode.INVALID_MESSAGE:
            return refused
        if refused == TOO_MANY_SESSIONS and code is ErrorCode.OVERLOADED:
            return refused
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
