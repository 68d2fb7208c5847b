from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_PCM: _ClassVar[Encoding]
    ENCODING_MULAW: _ClassVar[Encoding]
    ENCODING_ALAW: _ClassVar[Encoding]
ENCODING_UNSPECIFIED: Encoding
ENCODING_PCM: Encoding
ENCODING_MULAW: Encoding
ENCODING_ALAW: Encoding

class StreamRequest(_message.Message):
    __slots__ = ("config", "audio", "finalize", "stop", "keepalive")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: bytes
    finalize: Finalize
    stop: Stop
    keepalive: Keepalive
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[bytes] = ..., finalize: _Optional[_Union[Finalize, _Mapping]] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ..., keepalive: _Optional[_Union[Keepalive, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("format", "interim_results", "interim_interval", "vad", "trace_id", "word_times", "turn_detection", "segments")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    INTERIM_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    WORD_TIMES_FIELD_NUMBER: _ClassVar[int]
    TURN_DETECTION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    format: AudioFormat
    interim_results: bool
    interim_interval: float
    vad: VadOptions
    trace_id: str
    word_times: bool
    turn_detection: TurnDetection
    segments: bool
    def __init__(self, format: _Optional[_Union[AudioFormat, _Mapping]] = ..., interim_results: _Optional[bool] = ..., interim_interval: _Optional[float] = ..., vad: _Optional[_Union[VadOptions, _Mapping]] = ..., trace_id: _Optional[str] = ..., word_times: _Optional[bool] = ..., turn_detection: _Optional[_Union[TurnDetection, _Mapping]] = ..., segments: _Optional[bool] = ...) -> None: ...

class TurnDetection(_message.Message):
    __slots__ = ("eot_threshold", "eager_eot_threshold", "eot_timeout_ms")
    EOT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EAGER_EOT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EOT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    eot_threshold: float
    eager_eot_threshold: float
    eot_timeout_ms: int
    def __init__(self, eot_threshold: _Optional[float] = ..., eager_eot_threshold: _Optional[float] = ..., eot_timeout_ms: _Optional[int] = ...) -> None: ...

class AudioFormat(_message.Message):
    __slots__ = ("channels", "sample_rate", "bit_depth", "is_float", "encoding")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    BIT_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IS_FLOAT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool
    encoding: Encoding
    def __init__(self, channels: _Optional[int] = ..., sample_rate: _Optional[int] = ..., bit_depth: _Optional[int] = ..., is_float: _Optional[bool] = ..., encoding: _Optional[_Union[Encoding, str]] = ...) -> None: ...

class VadOptions(_message.Message):
    __slots__ = ("threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms", "max_segment_s")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SPEECH_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_PAD_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_S_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    min_speech_ms: int
    min_silence_ms: int
    speech_pad_ms: int
    max_segment_s: float
    def __init__(self, threshold: _Optional[float] = ..., min_speech_ms: _Optional[int] = ..., min_silence_ms: _Optional[int] = ..., speech_pad_ms: _Optional[int] = ..., max_segment_s: _Optional[float] = ...) -> None: ...

class Finalize(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stop(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Keepalive(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamEvent(_message.Message):
    __slots__ = ("ready", "segment", "active", "inactive", "error", "done", "turn")
    READY_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    ready: Ready
    segment: Segment
    active: Active
    inactive: Inactive
    error: Error
    done: Done
    turn: Turn
    def __init__(self, ready: _Optional[_Union[Ready, _Mapping]] = ..., segment: _Optional[_Union[Segment, _Mapping]] = ..., active: _Optional[_Union[Active, _Mapping]] = ..., inactive: _Optional[_Union[Inactive, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., turn: _Optional[_Union[Turn, _Mapping]] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("session_id", "route", "model", "model_sample_rate", "channels", "trace_id", "warnings")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    route: str
    model: str
    model_sample_rate: int
    channels: int
    trace_id: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., route: _Optional[str] = ..., model: _Optional[str] = ..., model_sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., trace_id: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("channel", "start_time", "end_time", "is_final", "output")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    channel: int
    start_time: float
    end_time: float
    is_final: bool
    output: _struct_pb2.Struct
    def __init__(self, channel: _Optional[int] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., is_final: _Optional[bool] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Active(_message.Message):
    __slots__ = ("channel", "time")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    channel: int
    time: float
    def __init__(self, channel: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class Inactive(_message.Message):
    __slots__ = ("channel", "time")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    channel: int
    time: float
    def __init__(self, channel: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "channel", "start_time", "end_time", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    channel: int
    start_time: float
    end_time: float
    retryable: bool
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., channel: _Optional[int] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., retryable: _Optional[bool] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("channel", "event", "turn_index", "transcript", "words", "start_time", "end_time", "confidence", "trigger")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    channel: int
    event: str
    turn_index: int
    transcript: str
    words: _containers.RepeatedCompositeFieldContainer[TurnWord]
    start_time: float
    end_time: float
    confidence: float
    trigger: str
    def __init__(self, channel: _Optional[int] = ..., event: _Optional[str] = ..., turn_index: _Optional[int] = ..., transcript: _Optional[str] = ..., words: _Optional[_Iterable[_Union[TurnWord, _Mapping]]] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., confidence: _Optional[float] = ..., trigger: _Optional[str] = ...) -> None: ...

class TurnWord(_message.Message):
    __slots__ = ("word", "confidence", "start", "end")
    WORD_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    word: str
    confidence: float
    start: float
    end: float
    def __init__(self, word: _Optional[str] = ..., confidence: _Optional[float] = ..., start: _Optional[float] = ..., end: _Optional[float] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("audio_seconds",)
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    audio_seconds: float
    def __init__(self, audio_seconds: _Optional[float] = ...) -> None: ...
