"""Model faults on a real server: each failed result says whether it is worth retrying, and a
model that hangs costs its stream one ``inference_timeout`` but never wedges the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamer.cli.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


@pytest.mark.parametrize(
    ("env", "code", "retryable"),
    [
        ({"STREAMER_MODEL__FAILURE_RATE": "1"}, "model_error", False),
        ({"STREAMER_MODEL__PANIC_RATE": "1"}, "model_crashed", False),
        (
            {
                "STREAMER_INFERENCE__POOL": "process",
                "STREAMER_INFERENCE__WORKERS": "1",
                "STREAMER_MODEL__PANIC_RATE": "1",
                "STREAMER_MODEL__PANIC_KILLS_PROCESS": "true",
            },
            "worker_crashed",
            True,
        ),
        (
            {"STREAMER_MODEL__DELAY": "2", "STREAMER_INFERENCE__DEADLINE_SECONDS": "0.2"},
            "inference_timeout",
            True,
        ),
    ],
)
async def test_a_failed_result_says_whether_to_retry(
    launch: Callable[..., Any], env: dict[str, str], code: str, retryable: bool
) -> None:
    srv = launch(env=env)
    result = await stream_file(srv.ws(), load_audio(AUDIO / "big_dog_8k.wav"))
    assert result.done is not None and result.errors
    for error in result.errors:
        assert (error["code"], error["retryable"]) == (code, retryable), error
