"""falling_behind on a real server, over WebSocket and gRPC: told when results really lag
the arrival of their audio, never for audio that came in one large message and was
answered at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ServerProcess, server_fixture

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
LAG = {"STREAMER_SERVER__MAX_STREAM_LAG_SECONDS": "1"}

quick = server_fixture("lag_quick", LAG, grpc=True)
# Each inference takes 2.5 s: results of audio sent in real time come well past the 1 s
# bound, however fast or slow the machine.
slow = server_fixture(
    "lag_slow",
    {
        **LAG,
        "STREAMER_MODEL__DELAY": "2.5",
        "STREAMER_INFERENCE__WORKERS": "1",
        # Admit the next test's stream although the model is behind (its queue wait, and
        # its workers' busy time in the capacity estimate, would refuse it).
        "STREAMER_SERVER__MAX_QUEUE_WAIT_MS": "0",
        "STREAMER_SERVER__ADMIT_WITHIN_ESTIMATE": "false",
    },
    grpc=True,
)  # fmt: skip

Url = Callable[[ServerProcess, str], str]
TRANSPORTS: dict[str, Url] = {
    "websocket": lambda srv, route: srv.ws(route),
    "grpc": lambda srv, route: srv.grpc(route),
}


def falling_behind(errors: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in errors if e.get("code") == "falling_behind"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("route", ["simple", "segmented"])
async def test_eleven_seconds_in_one_message_answered_at_once_are_not_behind(
    quick: ServerProcess, transport: str, route: str
) -> None:
    audio = load_audio(AUDIO / "jfk.wav")  # 11 s at 16 kHz, 352 KB
    result = await stream_file(
        TRANSPORTS[transport](quick, route), audio, chunk_bytes=len(audio.data)
    )
    assert result.of_type("done"), result.events
    assert result.segments
    assert falling_behind(result.errors) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_real_time_stream_whose_results_lag_is_told_by_how_much(
    slow: ServerProcess, transport: str
) -> None:
    audio = load_audio(AUDIO / "jfk.wav")
    result = await stream_file(
        TRANSPORTS[transport](slow, "simple"),
        dataclasses.replace(
            audio, data=audio.data[: 3 * audio.bytes_per_second], frames=3 * audio.sample_rate
        ),  # its first 3 s
        real_time=True,
        results_timeout=120.0,
    )
    assert result.of_type("done"), result.events
    told = falling_behind(result.errors)
    assert told and all(e["retryable"] is True for e in told)
    assert "behind its audio" in str(told[0]["message"])
