"""Protocol v1 message schemas: what clients send and what the server sends back.

Requests keep the shapes of the original streamer-template so its clients work unchanged;
unknown request fields are rejected. Unknown event types must be ignorable by clients.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from streamer.audio.formats import MAX_CHANNELS, MAX_SAMPLE_RATE, AudioFormat, Encoding
from streamer.errors import ClientError, InvalidFormat, InvalidJson, InvalidMessage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FormatSpec(_Strict):
    """Layout of the binary audio frames that follow ``start``."""

    # No coercion: `true` is not one channel and "16000" is not a sample rate.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Bounds that hold for every format (the finer rules are ``AudioFormat.validate``'s),
    # so that no absurd number gets further than the parser.
    channels: int = Field(ge=1, le=MAX_CHANNELS)
    sample_rate: int = Field(ge=1, le=MAX_SAMPLE_RATE)
    bit_depth: int = Field(ge=1, le=64)
    is_float: bool = False
    # Not strict: a front-end may name the encoding by its value ("mulaw") in Python too.
    encoding: Encoding = Field(default=Encoding.PCM, strict=False)

    def to_audio_format(self) -> AudioFormat:
        return AudioFormat(
            channels=self.channels,
            sample_rate=self.sample_rate,
            bit_depth=self.bit_depth,
            is_float=self.is_float,
            encoding=self.encoding,
        )


MAX_OPTION_MS = 600_000
"""The largest duration in milliseconds a ``start`` option may name (ten minutes)."""
MAX_OPTION_SECONDS = 3600.0
"""The largest duration in seconds a ``start`` option may name (an hour)."""


def _finite(*, ge: float | None = None, gt: float | None = None, le: float) -> Any:
    """A finite float option within ``[ge or gt, le]``; ``None`` (unset) by default."""
    return Field(default=None, ge=ge, gt=gt, le=le, allow_inf_nan=False)


class VadOptions(_Strict):
    """Voice-detector tunables a client may set.

    A value that is not a finite number, or lies outside the range each field documents,
    is refused (``invalid_message`` naming the field); within it, the server clamps each
    to its own, narrower operating bounds.
    """

    threshold: float | None = _finite(ge=0.0, le=1.0)
    min_speech_ms: int | None = Field(default=None, ge=0, le=MAX_OPTION_MS)
    min_silence_ms: int | None = Field(default=None, ge=0, le=MAX_OPTION_MS)
    speech_pad_ms: int | None = Field(default=None, ge=0, le=MAX_OPTION_MS)
    max_segment_s: float | None = _finite(gt=0.0, le=MAX_OPTION_SECONDS)


class TurnDetection(_Strict):
    """Turn detection for a segmented stream: the end-of-turn model decides when a pause
    ends the speaker's turn, and the stream emits ``turn`` events.

    Deepgram Flux's thresholds: a probability at or above ``eot_threshold`` ends the turn;
    at or above ``eager_eot_threshold`` (when set, and not above ``eot_threshold``) an
    early end is announced; a pause of ``eot_timeout_ms`` ends the turn whatever the model
    says. ``min_end_silence_ms`` (AssemblyAI's ``min_turn_silence``): the model's answer
    may end the turn only once the pause is this long.
    """

    eot_threshold: float = Field(default=0.7, ge=0.5, le=0.9, allow_inf_nan=False)
    eager_eot_threshold: float | None = _finite(ge=0.3, le=0.9)
    eot_timeout_ms: int = Field(default=5000, ge=500, le=10_000)
    min_end_silence_ms: int = Field(default=0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _eager_below_end(self) -> TurnDetection:
        eager = self.eager_eot_threshold
        if eager is not None and eager > self.eot_threshold:
            raise ValueError("eager_eot_threshold must not be above eot_threshold")
        return self


class StartRequest(_Strict):
    """Begin a stream: the audio format and the options of this stream."""

    request: Literal["start"]
    format: FormatSpec
    interim_results: bool = False
    interim_interval: float | None = Field(
        default=None,
        gt=0.0,
        le=MAX_OPTION_SECONDS,
        allow_inf_nan=False,
        description="Seconds of segment audio between interim results.",
    )
    vad: VadOptions | None = None
    word_times: bool = Field(
        default=False,
        description="Finals carry `words`: each word's start and end (seconds of the "
        "stream) and confidence, where the model gives them.",
    )
    trace_id: str | None = Field(
        default=None, description="W3C traceparent; becomes the parent of the stream's span."
    )
    turn_detection: TurnDetection | None = Field(
        default=None,
        description="Detect the end of each turn with the end-of-turn model and emit "
        "`turn` events (segmented route only).",
    )
    segments: bool = Field(
        default=True,
        description="False: no `segment` events, and no inference for them; with "
        "`turn_detection` (which it needs), the `turn` events alone carry the transcript.",
    )


class StopRequest(_Strict):
    """End the stream: flush every open result, send ``done``; optionally close."""

    request: Literal["stop"]
    disconnect: bool = False


class FinalizeRequest(_Strict):
    """Force final results for everything received so far; the stream goes on."""

    request: Literal["finalize"]


class KeepaliveRequest(_Strict):
    """No-op that keeps idle connections open through proxies."""

    request: Literal["keepalive"]


ClientMessage = Annotated[
    StartRequest | StopRequest | FinalizeRequest | KeepaliveRequest,
    Field(discriminator="request"),
]

_client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def _describe(err: ValidationError) -> tuple[bool, str]:
    """Return (is_format_error, message naming the offending field)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
    # The discriminator puts the tag name first in the location; drop it.
    for tag in ("start.", "stop.", "finalize.", "keepalive."):
        if loc.startswith(tag):
            loc = loc[len(tag) :]
    kind = first["type"]
    if kind == "extra_forbidden":
        text = f"unknown field {loc!r}"
    elif kind == "missing":
        text = f"missing field {loc!r}"
    elif kind == "union_tag_invalid":
        text = f"unknown request {first.get('input', {}).get('request')!r}"
    elif kind == "union_tag_not_found":
        text = "missing field 'request'"
    else:
        text = f"invalid field {loc!r}: {first['msg']}"
    in_format = loc.startswith("format.") or (loc == "format" and kind != "missing")
    return in_format, text


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse one text message, raising a typed ``ClientError`` on any fault."""
    try:
        return _client_message.validate_json(text)
    except ValidationError as err:
        raise _typed(err) from None


def parse_start(body: dict[str, Any]) -> StartRequest:
    """Validate a ``start`` request given as Python values (another front-end's config,
    translated), with the checks and error messages of a JSON ``start``."""
    try:
        message = _client_message.validate_python({**body, "request": "start"})
    except ValidationError as err:
        raise _typed(err) from None
    assert isinstance(message, StartRequest)
    return message


def _typed(err: ValidationError) -> ClientError:
    """The typed error for a message that failed validation."""
    if any(e["type"] == "json_invalid" for e in err.errors()):
        return InvalidJson(f"message is not valid JSON: {err.errors()[0]['msg']}")
    first = err.errors()[0]
    if first["type"] in ("model_attributes_type", "model_type", "dict_type") and not first["loc"]:
        return InvalidMessage("message must be a JSON object")
    is_format, text = _describe(err)
    if is_format:
        return InvalidFormat(text)
    return InvalidMessage(text)


# Server to client: the wire shapes, for the JSON Schema and the docs. The server's own
# events are ``streamer.events``; ``codecs.v1_json`` writes them in these shapes.


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class ReadyEvent(_Event):
    """The ``start`` was accepted."""

    type: Literal["ready"] = "ready"
    session_id: str
    route: str
    model: str
    model_sample_rate: int
    channels: int
    trace_id: str | None = None
    warnings: list[str] | None = Field(
        default=None,
        description="What the server ignored in the request (a trace_id that is not a valid "
        "W3C traceparent, say); absent when nothing was.",
    )


class SegmentEvent(_Event):
    """A model result for ``[start_time, end_time)`` of one channel's audio."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: Literal["segment"] = "segment"
    channel: int
    start_time: float
    end_time: float
    is_final: bool = True


class ActiveEvent(_Event):
    """Speech started at ``time`` seconds of the channel's audio."""

    type: Literal["active"] = "active"
    channel: int
    time: float


class InactiveEvent(_Event):
    """Speech ended at ``time`` seconds of the channel's audio."""

    type: Literal["inactive"] = "inactive"
    channel: int
    time: float


class TurnWordModel(BaseModel):
    """A word of a turn's transcript."""

    model_config = ConfigDict(frozen=True, title="TurnWord")

    word: str
    confidence: float
    start: float = Field(description="Seconds of the channel's audio.")
    end: float


class TurnEventModel(_Event):
    """What a channel's turn did (streams that asked for ``turn_detection``).

    A turn opens with ``start``; ``update`` carries its transcript as it grows;
    ``eager_end`` says it has probably ended (when ``eager_eot_threshold`` is set), and
    ``resumed`` takes that back; ``end`` closes it, with the transcript of its
    ``eager_end`` unless ``resumed`` came between. ``turn_index`` grows after each end.
    """

    model_config = ConfigDict(frozen=True, title="TurnEvent")

    type: Literal["turn"] = "turn"
    channel: int
    event: Literal["start", "update", "eager_end", "resumed", "end"]
    turn_index: int
    transcript: str = Field(description="The turn's transcript so far.")
    words: list[TurnWordModel]
    start_time: float = Field(description="Where the turn's audio begins (seconds).")
    end_time: float = Field(description="Where the audio transcribed or judged so far ends.")
    confidence: float = Field(
        description="The end-of-turn model's latest probability that the turn has ended."
    )
    trigger: Literal["model", "timeout", "manual"] | None = Field(
        default=None,
        description="On `end` only: the model's probability reached `eot_threshold`, the "
        "pause reached `eot_timeout_ms`, or the turn was ended by the client or the end "
        "of the audio.",
    )


class ErrorEvent(_Event):
    """A failure the client can act on, with a typed code."""

    type: Literal["error"] = "error"
    code: str
    message: str
    channel: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    retryable: bool | None = Field(
        default=None,
        description="For a failed inference: whether the same audio may succeed if sent again.",
    )


class DoneEvent(_Event):
    """Every result of the stream has been sent."""

    type: Literal["done"] = "done"
    audio_seconds: float = Field(description="Seconds of audio received, per channel.")


ServerEvent = Annotated[
    ReadyEvent
    | SegmentEvent
    | ActiveEvent
    | InactiveEvent
    | TurnEventModel
    | ErrorEvent
    | DoneEvent,
    Field(discriminator="type"),
]


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every client message and server event."""
    return {
        "client_message": TypeAdapter(ClientMessage).json_schema(),
        "server_event": TypeAdapter(ServerEvent).json_schema(),
    }
