"""Protocol v1 message schemas: what clients send and what the server sends back.

Requests keep the shapes of the original streamer-template so its clients work unchanged;
unknown request fields are rejected. Unknown event types must be ignorable by clients.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from streamer.audio.formats import AudioFormat, Encoding
from streamer.errors import InvalidFormat, InvalidJson, InvalidMessage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FormatSpec(_Strict):
    """Layout of the binary audio frames that follow ``start``."""

    # No coercion: `true` is not one channel and "16000" is not a sample rate.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool = False
    encoding: Encoding = Encoding.PCM

    def to_audio_format(self) -> AudioFormat:
        return AudioFormat(
            channels=self.channels,
            sample_rate=self.sample_rate,
            bit_depth=self.bit_depth,
            is_float=self.is_float,
            encoding=self.encoding,
        )


class VadOptions(_Strict):
    """Voice-detector tunables a client may set; the server clamps each to safe bounds."""

    threshold: float | None = None
    min_speech_ms: int | None = None
    min_silence_ms: int | None = None
    speech_pad_ms: int | None = None
    max_segment_s: float | None = None


class StartRequest(_Strict):
    """Begin a stream: the audio format and the options of this stream."""

    request: Literal["start"]
    format: FormatSpec
    interim_results: bool = False
    interim_interval: float | None = Field(
        default=None, description="Seconds of segment audio between interim results."
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
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise InvalidJson(f"message is not valid JSON: {err.errors()[0]['msg']}") from None
        first = err.errors()[0]
        if (
            first["type"] in ("model_attributes_type", "model_type", "dict_type")
            and not first["loc"]
        ):
            raise InvalidMessage("message must be a JSON object") from None
        is_format, text_ = _describe(err)
        if is_format:
            raise InvalidFormat(text_) from None
        raise InvalidMessage(text_) from None


# Server to client.


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


class ErrorEvent(_Event):
    """A failure the client can act on, with a typed code."""

    type: Literal["error"] = "error"
    code: str
    message: str
    channel: int | None = None
    start_time: float | None = None
    end_time: float | None = None


class DoneEvent(_Event):
    """Every result of the stream has been sent."""

    type: Literal["done"] = "done"
    audio_seconds: float = Field(description="Seconds of audio received, per channel.")


ServerEvent = Annotated[
    ReadyEvent | SegmentEvent | ActiveEvent | InactiveEvent | ErrorEvent | DoneEvent,
    Field(discriminator="type"),
]


def encode_event(event: _Event) -> str:
    """Serialise an event for the wire (fields that are ``None`` are left out)."""
    return event.model_dump_json(exclude_none=True)


def segment_event(
    channel: int, start_time: float, end_time: float, is_final: bool, output: dict[str, Any]
) -> SegmentEvent:
    """Build a ``segment`` event carrying the model's output fields."""
    return SegmentEvent(
        channel=channel, start_time=start_time, end_time=end_time, is_final=is_final, **output
    )


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every client message and server event."""
    return {
        "client_message": TypeAdapter(ClientMessage).json_schema(),
        "server_event": TypeAdapter(ServerEvent).json_schema(),
    }
