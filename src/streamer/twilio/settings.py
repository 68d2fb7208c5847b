"""The ``[twilio]`` settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class TwilioSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auth_token: SecretStr | None = Field(
        default=None,
        description="The account's auth token: when set, /v1/twilio needs a valid "
        "X-Twilio-Signature (403 otherwise), and that signature is the caller's credential.",
    )
    public_url: str | None = Field(
        default=None,
        description="The scheme and host Twilio connects to (wss://voice.example.com), for "
        "the signed URL behind a proxy; unset: the request's own (X-Forwarded-Proto honoured).",
    )
    callback_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (or host:port) a call's customParameters.callback may name; each "
        "final is POSTed there. Empty: no callbacks.",
    )
    callback_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    callback_queue: int = Field(
        default=1000, ge=1, description="Callbacks waiting to be sent; past it, dropped (counted)."
    )
    replay_finals: int = Field(
        default=500, ge=0, description="Finals a call keeps for subscribers that come late."
    )
    retain_calls: int = Field(
        default=200, ge=0, description="Ended calls kept for late subscribers (the latest)."
    )
    max_calls: int = Field(
        default=10_000, ge=1, description="Calls being streamed or waited for by subscribers."
    )
    max_skew_seconds: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="How far one track may lag behind the other before it is filled with silence.",
    )


class BusSettings(BaseModel):
    """The ``[bus]`` settings: how a call's events reach every process and pod."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="redis://host:port/db: call events go through this Redis, so that a "
        "subscriber on any pod gets a call streamed on any other (pip install "
        "'streamer[redis]'). Unset: the processes of one `streamer serve` share them.",
    )
    prefix: str = Field(
        default="streamer", description="Prefix of the Redis channel and keys this server uses."
    )
    retain_seconds: float = Field(
        default=3600.0, gt=0, description="How long Redis keeps an ended call's finals."
    )
    max_pending: int = Field(
        default=10_000,
        ge=1,
        description="Call events waiting to be written to the bus; past it the bus is "
        "reported lost (subscribers end with bus_unavailable).",
    )
