"""One model process for every front-end process (``inference.pool = "shared"``), end to
end with the test model: two front-end processes, one model process; a model that kills
its process on one input fails only that request (``worker_crashed``), the supervisor
starts the model process again, and later streams are served in full."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from worker_crash import PANIC, crash_beside_a_bystander

from streamer.client import stream_file

pytestmark = pytest.mark.e2e

SHARED = {"STREAMER_INFERENCE__POOL": "shared", **PANIC}


def health(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/api/v1/health", timeout=10).json())


async def test_front_ends_share_the_model_process_and_outlive_its_crash(
    launch: Callable[..., Any], tmp_path: Path
) -> None:
    srv = launch(env=SHARED, workers=2)
    body = health(srv.http)
    assert (body["model"], body["device"]) == ("test", "cpu")  # the model process's
    bystander = await crash_beside_a_bystander(srv, tmp_path)
    # The supervisor started the model process again; both front-ends reach it.
    results = await asyncio.gather(*(stream_file(srv.ws(), bystander) for _ in range(6)))
    assert all(r.ok and len(r.segments) == 4 for r in results), [r.errors for r in results]
    assert "the model process exited with -9; starting it again" in srv.output()
