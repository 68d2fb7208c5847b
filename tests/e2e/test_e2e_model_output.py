"""Model output a client cannot be sent never hangs a stream: it becomes a ``model_error``
for its segment, and the stream goes on to ``done``; on both transports, on a real socket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import start_server

from streamer.app import create_app
from streamer.client import load_audio, stream_file
from streamer.client.grpc import stream_file as grpc_stream_file
from streamer.codecs.v1_json import SEGMENT_FIELDS
from streamer.config import Settings

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parents[1]
AUDIO = TESTS / "fixtures" / "audio"
FACTORY = "model_factories:odd_outputs"

# What each call of the model gives (it cycles through seven kinds of output).
EXPECTED: list[tuple[str, Any]] = [
    ("segment", {"count": 3, "level": 0.5, "voiced": True}),
    ("segment", {"vector": [0, 1, 2], "pairs": [1, 2.5]}),
    ("error", "output['score'] is nan"),
    ("error", "uses the key 'channel'"),
    ("error", "is of type date, which has no JSON form"),
    ("error", "returned a list, not a dict"),
    ("segment", {"text": "plain"}),
]


def check(events: list[dict[str, Any]]) -> list[str]:
    """Every one-second chunk has its segment or its model_error, in order, then done;
    the stream ids of the refused outputs' streams, from ready."""
    assert events[0]["type"] == "ready" and events[-1]["type"] == "done"
    results = events[1:-1]
    assert len(results) == 11  # 11 s of audio in 1 s chunks
    for index, event in enumerate(results):
        kind, detail = EXPECTED[index % len(EXPECTED)]
        assert event["type"] == kind, (index, event)
        assert (event["start_time"], event["end_time"]) == (index, index + 1)
        if kind == "segment":
            output = {k: v for k, v in event.items() if k not in SEGMENT_FIELDS}
            for key, value in detail.items():
                assert output[key] == value, (index, event)
                assert type(output[key]) is type(value)
        else:
            assert event["code"] == "model_error" and detail in event["message"], event
            assert event["retryable"] is False
    return [events[0]["session_id"]]


async def test_unsendable_outputs_are_model_errors_over_the_websocket(tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "STREAMER_INFERENCE__MODEL": FACTORY}
    server = start_server(tmp_path, env={**env, "STREAMER_INFERENCE__WORKERS": "1"})
    try:
        result = await stream_file(server.ws("simple"), load_audio(AUDIO / "jfk.wav"))
    finally:
        server.stop()
    [stream_id] = check(result.events)
    log = [line for line in server.output().splitlines() if "unusable model output" in line]
    assert len(log) == 6 and all(stream_id in line for line in log), server.output()[-2000:]


async def test_unsendable_outputs_are_model_errors_over_grpc() -> None:
    settings = Settings.model_validate(
        {
            "server": {"host": "127.0.0.1", "grpc_port": 0},
            "inference": {"model": FACTORY, "workers": 1},
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        target = f"127.0.0.1:{app.state.grpc_port}"
        result = await grpc_stream_file(target, load_audio(AUDIO / "jfk.wav"), route="simple")
    check(result.events)
