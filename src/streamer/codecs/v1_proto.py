"""Protocol v1 over gRPC: protobuf messages of package ``streamer.v1``.

Pure functions, shared by the gRPC transport and the gRPC client. Inbound, a request becomes
the connection machine's input; the config is validated into a ``StartRequest`` by the same
models (so the same defaults, checks and error messages) as a JSON ``start``. Outbound,
events become ``StreamEvent`` messages, and back into the dicts the WebSocket carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from streamer.errors import InvalidMessage
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
)
from streamer.protocol.inputs import Audio, Input
from streamer.protocol.messages import (
    FinalizeRequest,
    KeepaliveRequest,
    StopRequest,
    parse_start,
)
from streamer.protocol.proto import streamer_v1_pb2 as pb

_ENCODINGS: dict[pb.Encoding, str] = {
    pb.ENCODING_PCM: "pcm",
    pb.ENCODING_MULAW: "mulaw",
    pb.ENCODING_ALAW: "alaw",
}
_ENCODING_VALUES = {name: value for value, name in _ENCODINGS.items()}
_FORMAT_FIELDS = ("channels", "sample_rate", "bit_depth", "is_float")
_VAD_FIELDS = ("threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms", "max_segment_s")
_TURN_FIELDS = ("eot_threshold", "eager_eot_threshold", "eot_timeout_ms")
_MAX_EXACT_INT = 2**53
"""Struct numbers are doubles: whole ones below this were integers on the WebSocket."""


# Requests.


def decode_request(message: pb.StreamRequest, traceparent: str | None = None) -> Input:
    """The machine's input for one request (``ClientError`` when it is none).

    A ``stop`` always ends the call (one call, one stream); ``traceparent`` (from the call's
    metadata) is used when the config carries none.
    """
    kind = message.WhichOneof("request")
    if kind == "audio":
        return Audio(message.audio)
    if kind == "config":
        start = config_to_start(message.config, traceparent)
        del start["request"]
        return parse_start(start)
    if kind == "finalize":
        return FinalizeRequest(request="finalize")
    if kind == "stop":
        return StopRequest(request="stop", disconnect=True)
    if kind == "keepalive":
        return KeepaliveRequest(request="keepalive")
    raise InvalidMessage("the request sets none of config, audio, finalize, stop, keepalive")


def config_to_start(config: pb.StreamConfig, traceparent: str | None = None) -> dict[str, Any]:
    """The WebSocket ``start`` request that says what ``config`` says.

    Unset fields are left out, so the server's defaults and its "missing field" errors are
    the WebSocket's. ``traceparent`` (from the call's metadata) is used when the config
    carries none.
    """
    start: dict[str, Any] = {"request": "start", "interim_results": config.interim_results}
    if config.word_times:
        start["word_times"] = True
    if config.HasField("format"):
        fmt = config.format
        spec: dict[str, Any] = {name: getattr(fmt, name) for name in _FORMAT_FIELDS}
        if fmt.encoding != pb.ENCODING_UNSPECIFIED:
            # An unknown value is passed on as it is, to be refused as invalid_format.
            spec["encoding"] = _ENCODINGS.get(fmt.encoding, fmt.encoding)
        start["format"] = spec
    if config.HasField("interim_interval"):
        start["interim_interval"] = config.interim_interval
    if config.HasField("vad"):
        vad = config.vad
        start["vad"] = {name: getattr(vad, name) for name in _VAD_FIELDS if vad.HasField(name)}
    if config.HasField("segments"):
        start["segments"] = config.segments
    if config.HasField("turn_detection"):
        turns = config.turn_detection
        start["turn_detection"] = {
            name: getattr(turns, name) for name in _TURN_FIELDS if turns.HasField(name)
        }
    trace = config.trace_id or traceparent
    if trace:
        start["trace_id"] = trace
    return start


def start_to_config(start: Mapping[str, Any]) -> pb.StreamConfig:
    """The config for a WebSocket ``start`` request (as a dict); ``ValueError`` if it has
    fields the config cannot carry."""
    unknown = set(start) - {"request", "format", "interim_results", "interim_interval"}
    unknown -= {"vad", "trace_id", "word_times", "turn_detection", "segments"}
    if unknown:
        raise ValueError(f"the gRPC config has no field {sorted(unknown)[0]!r}")
    config = pb.StreamConfig(
        interim_results=bool(start.get("interim_results", False)),
        word_times=bool(start.get("word_times", False)),
    )
    if (fmt := start.get("format")) is not None:
        extra = set(fmt) - {*_FORMAT_FIELDS, "encoding"}
        if extra:
            raise ValueError(f"the gRPC audio format has no field {sorted(extra)[0]!r}")
        config.format.SetInParent()
        for name in _FORMAT_FIELDS:
            if name in fmt:
                setattr(config.format, name, fmt[name])
        if "encoding" in fmt:
            config.format.encoding = _ENCODING_VALUES[str(fmt["encoding"])]
    if start.get("interim_interval") is not None:
        config.interim_interval = float(start["interim_interval"])
    if (vad := start.get("vad")) is not None:
        extra = set(vad) - set(_VAD_FIELDS)
        if extra:
            raise ValueError(f"the gRPC VAD options have no field {sorted(extra)[0]!r}")
        config.vad.SetInParent()
        for name, value in vad.items():
            if value is not None:
                setattr(config.vad, name, value)
    if start.get("segments") is not None:
        config.segments = bool(start["segments"])
    if (turns := start.get("turn_detection")) is not None:
        extra = set(turns) - set(_TURN_FIELDS)
        if extra:
            raise ValueError(f"the gRPC turn detection has no field {sorted(extra)[0]!r}")
        config.turn_detection.SetInParent()
        for name, value in turns.items():
            if value is not None:
                setattr(config.turn_detection, name, value)
    if start.get("trace_id"):
        config.trace_id = str(start["trace_id"])
    return config


# Events.


def event_to_proto(event: Event) -> pb.StreamEvent:
    """The protobuf form of an event the pipeline emitted."""
    if isinstance(event, SegmentResult):
        segment = pb.Segment(
            channel=event.channel,
            start_time=event.start,
            end_time=event.end,
            is_final=event.final,
        )
        # The WebSocket leaves out output fields that are None; so does the Struct.
        segment.output.update({k: v for k, v in event.output.items() if v is not None})
        return pb.StreamEvent(segment=segment)
    if isinstance(event, SpeechStarted):
        return pb.StreamEvent(active=pb.Active(channel=event.channel, time=event.time))
    if isinstance(event, SpeechEnded):
        return pb.StreamEvent(inactive=pb.Inactive(channel=event.channel, time=event.time))
    if isinstance(event, Ready):
        return pb.StreamEvent(
            ready=pb.Ready(
                session_id=event.session_id,
                route=event.route,
                model=event.model,
                model_sample_rate=event.model_sample_rate,
                channels=event.channels,
                trace_id=event.trace_id,
                warnings=list(event.warnings),
            )
        )
    if isinstance(event, StreamError):
        return pb.StreamEvent(
            error=pb.Error(
                code=str(event.code),
                message=event.message,
                channel=event.channel,
                start_time=event.start,
                end_time=event.end,
                retryable=event.retryable,
            )
        )
    if isinstance(event, Done):
        return pb.StreamEvent(done=pb.Done(audio_seconds=event.audio_seconds))
    if isinstance(event, Turn):
        return pb.StreamEvent(
            turn=pb.Turn(
                channel=event.channel,
                event=V1_TURN_EVENTS[event.event],
                turn_index=event.turn_index,
                transcript=event.transcript,
                words=[
                    pb.TurnWord(word=w.word, confidence=w.confidence, start=w.start, end=w.end)
                    for w in event.words
                ],
                start_time=event.audio_window_start,
                end_time=event.audio_window_end,
                confidence=event.end_of_turn_confidence,
                trigger=event.trigger,
            )
        )
    raise TypeError(f"no protobuf form for {type(event).__name__}")


def _restore_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _restore_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_ints(v) for v in value]
    return value


def event_to_dict(message: pb.StreamEvent) -> dict[str, Any] | None:
    """The event as the WebSocket carries it (a parsed JSON object), or None for an event
    this client does not know (which clients must ignore).

    Model output numbers travel as doubles; whole ones come back as integers, as the test
    model and most real ones send them.
    """
    kind = message.WhichOneof("event")
    if kind is None:
        return None
    body = getattr(message, kind)
    event: dict[str, Any] = {"type": kind}
    for field in body.DESCRIPTOR.fields:
        if field.name == "output":
            continue
        if kind == "turn" and field.name == "words":
            event["words"] = [json_format.MessageToDict(w) for w in body.words]
            for word in event["words"]:
                for name in ("confidence", "start", "end"):
                    word[name] = float(word.get(name, 0.0))
                word.setdefault("word", "")
            continue
        if field.has_presence and not body.HasField(field.name):
            continue  # None on the WebSocket, which leaves it out
        value = getattr(body, field.name)
        if field.is_repeated:
            if not value:
                continue  # empty: left out on the WebSocket too
            value = list(value)
        event[field.name] = value
    if kind == "segment":
        output = json_format.MessageToDict(body.output)
        for key, value in output.items():
            if key not in SEGMENT_FIELDS:
                event[key] = _restore_ints(value)
    return event
