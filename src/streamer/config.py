"""Settings: defaults, then a TOML file, then ``STREAMER_*`` environment variables, then flags.

Validated once at start-up; everything else takes the parts it needs as arguments.
Nested fields use ``__`` in the environment: ``STREAMER_MODEL__DELAY=0.05``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from streamer.inference.model import TestModelParams
from streamer.inference.whisper import WhisperParams


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    grpc_enabled: bool = Field(default=True, description="Serve gRPC beside the WebSocket.")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port, same host.")
    max_streams: int = Field(default=500, ge=1, description="Live streams before refusing.")
    max_backlog: int = Field(
        default=1000, ge=1, description="Queued inferences above which new streams are refused."
    )
    drain_seconds: float = Field(default=10.0, ge=0, description="Grace for open streams.")
    gil_switch_interval_ms: float = Field(
        default=0.5, gt=0, le=100, description="How soon a thread waiting for the GIL gets it."
    )
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    max_pending_events: int = Field(
        default=1000, ge=10, description="Events queued for a client that is not reading."
    )


class StreamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_seconds: float = Field(default=1.0, gt=0, le=60, description="Simple route chunk.")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="Inferences per stream.")
    interim_interval: float = Field(default=0.5, ge=0.1, le=10)
    min_interim_interval: float = Field(default=0.1, ge=0.05)
    vad_step_ms: float = Field(
        default=4.0,
        ge=0,
        le=50,
        description="Least time between VAD steps, so that frames of many streams share a call.",
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
    pool: Literal["thread", "process"] = Field(
        default="thread",
        description="Threads for models that release the GIL; processes for GIL-bound or "
        "crash-prone ones.",
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
    deadline_seconds: float | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    """All settings of one server process."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerSettings = ServerSettings()
    stream: StreamSettings = StreamSettings()
    inference: InferenceSettings = InferenceSettings()
    model: TestModelParams = TestModelParams()
    whisper: WhisperParams = WhisperParams()
    log_level: str = "info"
    log_json: bool = False

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
    lowest layer, so the environment still overrides them.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as f:
            file_values = tomllib.load(f)
    env_only = Settings()
    env_values = env_only.model_dump(exclude_unset=True)
    merged = _merge(_merge(file_values, env_values), flags)
    return Settings.model_validate(merged)
