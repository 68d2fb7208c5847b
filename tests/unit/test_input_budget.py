"""The per-stream input budget: sample rate times channels, refused at ``start``."""

from __future__ import annotations

import pytest

from streamer.app import build_services
from streamer.config import Settings
from streamer.errors import InvalidFormat
from streamer.pipeline import Route
from streamer.protocol.messages import FormatSpec, StartRequest


def start(channels: int, rate: int) -> StartRequest:
    fmt = FormatSpec(channels=channels, sample_rate=rate, bit_depth=16)
    return StartRequest(request="start", format=fmt)


@pytest.mark.parametrize(("channels", "rate"), [(2, 48000), (8, 16000), (1, 192000)])
async def test_the_default_budget_takes_common_formats(channels: int, rate: int) -> None:
    services = build_services(Settings())
    assert services.streams.options(Route.SIMPLE, start(channels, rate)).fmt.channels == channels


async def test_past_the_budget_is_invalid_format_naming_the_limit() -> None:
    services = build_services(Settings(stream={"max_samples_per_second": 32000}))
    services.streams.options(Route.SEGMENTED, start(2, 16000))
    with pytest.raises(InvalidFormat, match=r"limit of 32000 \(stream.max_samples_per_second\)"):
        services.streams.options(Route.SEGMENTED, start(3, 16000))
