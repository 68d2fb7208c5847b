"""Settings: defaults, then a TOML file, then ``STREAMER_*`` environment variables, then flags.

Validated once at start-up; everything else takes the parts it needs as arguments.
Nested fields use ``__`` in the environment: ``STREAMER_MODEL__DELAY=0.05``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from streamer.auth import AuthSettings
from streamer.inference.model import TestModelParams
from streamer.inference.whisper import WhisperParams
from streamer.origins import ANY, parse_origin
from streamer.segmentation.segmenter import SPECULATIVE_PAD_MS
from streamer.twilio.settings import BusSettings, TwilioSettings


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    grpc_enabled: bool = Field(default=True, description="Serve gRPC beside the WebSocket.")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port, same host.")
    workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Front-end processes on the same ports (`--workers`); none: one per "
        "usable core; 1: a single process.",
    )
    max_streams: int = Field(
        default=5000,
        ge=1,
        description="Live streams before refusing, for the whole server (all its processes): "
        "a hard ceiling; below it, the measured capacity admits (admit_within_estimate).",
    )
    max_backlog: int = Field(
        default=1000, ge=1, description="Queued inferences above which new streams are refused."
    )
    max_loop_lag_ms: float = Field(
        default=250.0,
        ge=0,
        description="Event-loop lag past which new streams are refused (overloaded); 0: none.",
    )
    max_vad_delay_ms: float = Field(
        default=500.0,
        ge=0,
        description="VAD step delay (frames handed in to probabilities back) past which new "
        "streams are refused; 0: none.",
    )
    max_queue_wait_ms: float = Field(
        default=2000.0,
        ge=0,
        description="Inference queue wait past which new streams are refused; 0: none.",
    )
    admit_within_estimate: bool = Field(
        default=True,
        description="Also refuse new streams once the process's estimated capacity "
        "(streamer_estimated_stream_capacity) is used up, before any delay passes its "
        "ceiling: for load that arrives faster than the delays can show it. false: only "
        "max_streams and the delays refuse.",
    )
    max_stream_lag_seconds: float = Field(
        default=5.0,
        ge=0,
        description="A stream sent in real time whose results come this much later than "
        "the message carrying its audio was sent (time spent waiting to be read counts) "
        "is told so: a falling_behind error event with the lag, at most once per this many "
        "seconds; 0: never.",
    )
    drain_seconds: float = Field(default=10.0, ge=0, description="Grace for open streams.")
    shutdown_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="After drain_seconds, the most that ending the remaining streams and "
        "stopping may take; then the process exits anyway, whatever model threads are doing.",
    )
    gil_switch_interval_ms: float = Field(
        default=0.5, gt=0, le=100, description="How soon a thread waiting for the GIL gets it."
    )
    max_message_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest binary WebSocket message, gRPC request."
    )
    max_text_bytes: int = Field(
        default=65536, ge=1024, le=1 << 24, description="Largest text WebSocket message."
    )
    ws_ping_interval_seconds: float = Field(
        default=20.0, ge=0, description="Seconds between WebSocket pings; 0: no pings."
    )
    ws_ping_timeout_seconds: float = Field(
        default=20.0, ge=0, description="Seconds a ping waits for its pong; 0: forever."
    )
    grpc_keepalive_seconds: float = Field(
        default=20.0, gt=0, description="Seconds between gRPC keepalive pings."
    )
    grpc_keepalive_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Seconds a gRPC keepalive ping waits for its answer."
    )
    handshake_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a whole HTTP request head "
        "(or the gRPC connection preface).",
    )
    max_connections: int = Field(
        default=1000,
        ge=0,
        description="Open connections per port past which new ones are refused; 0: no cap.",
    )
    max_pending_events: int = Field(
        default=1000, ge=10, description="Events queued for a client that is not reading."
    )
    close_grace_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds the events still queued when a connection ends are kept for a "
        "client that reads late, plus 20 ms per queued event, at most six times this; a "
        "client that has not read them by then is closed with slow_consumer.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web page origins (scheme://host[:port], exact) whose browsers may "
        "connect, beside the server's own; '*' allows every origin.",
    )
    allow_missing_origin: bool = Field(
        default=True, description="Let in connections without an Origin (non-browser clients)."
    )
    max_messages_per_second: float = Field(
        default=200.0,
        ge=0,
        description="Messages a second one connection may send (a burst of one second's "
        "worth); past it the connection ends with rate_limited (WebSocket 1008, gRPC "
        "RESOURCE_EXHAUSTED). Audio messages of at least 1/max_messages_per_second s of "
        "audio are not counted: backpressure paces them. 0: no limit.",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin.strip() != ANY and parse_origin(origin) is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return origins


class StreamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idle_seconds: float = Field(
        default=10.0,
        ge=0,
        description="A connection that sends nothing for this long (no start after "
        "connecting, no audio or keepalive while streaming) ends with idle_timeout; 0: never.",
    )
    max_audio_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Seconds of audio one stream may carry; past it the stream is finished "
        "(finals, done), then session_expired and the close. 0: unlimited.",
    )
    max_wall_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Seconds one stream may stay open; then it ends like one past "
        "max_audio_seconds. 0: unlimited.",
    )
    chunk_seconds: float = Field(default=1.0, gt=0, le=60, description="Simple route chunk.")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="Inferences per stream.")
    interim_interval: float = Field(default=0.5, ge=0.1, le=10)
    min_interim_interval: float = Field(default=0.1, ge=0.05)
    speculative_finals: bool = Field(
        default=True,
        description="Segmented streams decode a segment's final as soon as its pause holds "
        "speculative_pad_ms, so that a finalize (or the segment's end) finds it decoded or "
        "decoding; speech resuming withdraws it. Costs a decode per pause that turns out not "
        "to end the segment.",
    )
    speculative_pad_ms: float | None = Field(
        default=SPECULATIVE_PAD_MS,
        ge=0,
        description="How much of a pause must be in before its final is decoded ahead (at "
        "most the VAD's speech_pad_ms; None: that padding). A segment that closes in that "
        "pause ends there, its end padding this long. 64 lets the decode start before a voice "
        "agent's Finalize, which comes about 200 ms after its own VAD hears the speaker stop.",
    )
    max_samples_per_second: int = Field(
        default=192_000,
        ge=8000,
        description="Input budget of one stream: sample rate times channels. The default "
        "takes 48 kHz stereo, 8 channels at 16 kHz, or 96 kHz stereo; a start past it is "
        "refused with invalid_format.",
    )
    vad_step_ms: float = Field(
        default=32.0,
        ge=0,
        le=50,
        description="Least time between VAD steps (a Silero frame is 32 ms), so that frames "
        "of many streams share a call; a lone stream, or one sent as fast as it is answered, "
        "does not wait.",
    )


class TurnEngineSettings(BaseModel):
    """The end-of-turn model shared by every stream that asks for turn detection (Flux's
    ``/v2/listen``, ``turn_detection`` in a v1 ``start``). It is loaded on the first such
    stream, so a server that never serves one never loads it."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(default=1, ge=1, le=64, description="Intra-op threads of the model.")
    max_batch: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Most pauses scored in one call (batching pays only on a large machine "
        "or a GPU; on a small CPU a window costs as much alone as in a batch).",
    )
    max_wait_ms: float = Field(
        default=2000.0,
        gt=0,
        le=60_000,
        description="A pause waiting longer than this to be scored is dropped (its turn "
        "then ends by eot_timeout_ms).",
    )
    min_pause_ms: int = Field(
        default=200,
        ge=0,
        le=5000,
        description="The model is asked once a pause is this long; shorter ones are gaps "
        "between words.",
    )
    rescore_ms: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="Ask the model again each time a pause grows by this much; 0: once a "
        "pause (measured in docs/turns.md: asking again buys little).",
    )
    update_ms: int = Field(
        default=250, ge=0, le=10_000, description="Least transcribed audio between Updates."
    )


class InferenceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default="test",
        pattern=r"^(test|whisper|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="`test` (settings in [model]), `whisper` (the whisper extra; settings in "
        "[whisper]), or `package.module:factory`: a callable of no arguments that returns "
        "a model.",
    )
    backend: Literal["local", "ray"] = Field(
        default="local",
        description="`local`: the model runs in this process's pool; `ray`: on Ray Serve "
        "([ray] settings; the ray extra).",
    )
    pool: Literal["thread", "process", "shared"] = Field(
        default="thread",
        description="Threads for models that release the GIL; processes for GIL-bound or "
        "crash-prone ones; `shared`: one model process for every front-end process "
        "(`--workers`), as on a GPU, reached over a local socket.",
    )
    workers: int = Field(default=4, ge=1, le=256)
    max_batch: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Most inputs in one model call; the model's own max_batch_size caps it "
        "(1 for the test model unless [model] batch_size says more).",
    )
    max_wait_ms: float = Field(
        default=0.0, ge=0, le=1000, description="How long a batch waits to fill up."
    )
    interim_max_wait_ms: float = Field(
        default=1000.0,
        ge=0,
        description="An interim that has waited this long for a worker is skipped: the model "
        "is behind, and a newer interim or the final follows. 0: never skipped.",
    )
    interim_workers: int = Field(
        default=1,
        ge=0,
        description="Most interim batches running at once; they start only while no final "
        "runs, leaving the cores to finals. 0: no limit (and interims run beside finals).",
    )
    max_queued: int = Field(
        default=10000, ge=1, description="Queued inferences past which new interims are dropped."
    )
    deadline_seconds: float | None = Field(
        default=60.0,
        gt=0,
        description="Seconds from submission within which an inference must have its result; "
        "past it, inference_timeout (queued or running), and its worker is replaced.",
    )
    max_replacement_threads: int = Field(
        default=4,
        ge=0,
        le=256,
        description="Threads (pool = thread) started in place of ones stuck past the deadline "
        "that are still running; past it, the capacity stays lost until one returns.",
    )


class RaySettings(BaseModel):
    """The model tier on Ray Serve (``inference.backend = "ray"``)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        default=None,
        description="A running cluster (`auto`, `ray://head:10001`); none: start a local one.",
    )
    deploy: bool = Field(
        default=True,
        description="Deploy the model application from this server; false: use the "
        "`streamer-model` application already running on the cluster (a KubeRay RayService, "
        "say). With `--workers`, the supervisor deploys once and its processes share it.",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local cluster.")
    replica_cpus: float = Field(default=1.0, gt=0, description="CPUs per model replica.")
    replica_gpus: float = Field(
        default=0.0,
        ge=0,
        description="GPUs per model replica (a fraction shares one GPU between replicas); "
        "0: none, and whisper.device = 'auto' then runs on the replica's CPU.",
    )
    replicas: int = Field(default=1, ge=1, description="Replicas, without autoscaling.")
    autoscaling: dict[str, Any] | None = Field(
        default=None,
        description="Ray Serve's autoscaling_config, passed through (min_replicas, "
        "max_replicas, target_ongoing_requests, ...).",
    )
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="@serve.batch max_batch_size; none: the model's own (Whisper's is "
        "larger on a GPU).",
    )
    batch_wait_ms: float = Field(default=5.0, ge=0, description="@serve.batch wait.")


class AssemblyAISettings(BaseModel):
    """AssemblyAI's Universal-Streaming v3 route (``/v3/ws``)."""

    model_config = ConfigDict(extra="forbid")

    min_chunk_ms: float = Field(
        default=50.0, gt=0, description="Shortest binary audio message; shorter is error 3007."
    )
    max_chunk_ms: float = Field(
        default=1000.0, gt=0, description="Longest binary audio message; longer is error 3007."
    )


class Settings(BaseSettings):
    """All settings of one server process."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerSettings = ServerSettings()
    stream: StreamSettings = StreamSettings()
    inference: InferenceSettings = InferenceSettings()
    turn: TurnEngineSettings = TurnEngineSettings()
    model: TestModelParams = TestModelParams()
    whisper: WhisperParams = WhisperParams()
    ray: RaySettings = RaySettings()
    auth: AuthSettings = AuthSettings()
    twilio: TwilioSettings = TwilioSettings()
    assemblyai: AssemblyAISettings = AssemblyAISettings()
    bus: BusSettings = BusSettings()
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    log_json: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (passed as init arguments) win over the environment, which wins over the file.
        return (init_settings, env_settings)


class SettingsError(ValueError):
    """Settings that cannot be used, with one line saying where, which key and what was
    expected."""


def _has(values: dict[str, Any], loc: tuple[str, ...]) -> bool:
    for part in loc:
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


def _fields(loc: tuple[str, ...]) -> list[str]:
    """The keys a setting at ``loc`` could have been (for an unknown one)."""
    model: Any = Settings
    for part in loc[:-1]:
        info = model.model_fields.get(part)
        if info is None or not isinstance(info.annotation, type):
            return []
        model = info.annotation
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def _describe(
    error: ValidationError, path: Path | None, file_values: dict[str, Any], flags: dict[str, Any]
) -> str:
    """One line for the first fault: where the value came from, its key, what was expected."""
    errors = error.errors()
    first = errors[0]
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc)
    env_name = "STREAMER_" + "__".join(loc).upper()
    if _has(flags, loc):
        source = "command line"
    elif env_name in os.environ:
        source = f"environment {env_name}"
    elif path is not None and _has(file_values, loc):
        source = str(path)
    else:
        source = "settings"
    kind = first["type"]
    if kind == "extra_forbidden":
        what = "unknown section or key" if len(loc) == 1 else "unknown key"
        expected = ", ".join(_fields(loc))
        text = f"{what} {key!r}" + (f" (expected one of: {expected})" if expected else "")
    else:
        given = first.get("input")
        shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
        expected = first["msg"].replace("Input should be ", "").replace("Input should ", "")
        text = f"{key}: expected {expected[:1].lower()}{expected[1:]}, got {shown}"
    more = len(errors) - 1
    return f"{source}: {text}" + (f" (and {more} more)" if more else "")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(path: Path | None = None, **flags: Any) -> Settings:
    """Build settings from an optional TOML file, the environment and flag overrides.

    ``flags`` are nested dicts (``server={"port": 9000}``); the file's values are the
    lowest layer, so the environment still overrides them. Raises ``SettingsError`` (one
    line: where, which key, what was expected) for a missing or unreadable file, invalid
    TOML, an unknown section or key, a wrong type or a value out of range.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                file_values = tomllib.load(f)
        except FileNotFoundError:
            raise SettingsError(f"{path}: the settings file does not exist") from None
        except IsADirectoryError:
            raise SettingsError(f"{path}: is a directory, not a settings file") from None
        except OSError as error:
            raise SettingsError(f"{path}: cannot be read: {error.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{path}: is not valid TOML: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{path}: is not valid TOML: {error}") from None
    try:
        env_only = Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error, None, {}, {})) from None
    env_values = env_only.model_dump(exclude_unset=True)
    merged = _merge(_merge(file_values, env_values), flags)
    try:
        return Settings.model_validate(merged)
    except ValidationError as error:
        raise SettingsError(_describe(error, path, file_values, flags)) from None
