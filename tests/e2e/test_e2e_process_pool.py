"""The process pool end to end: a model that kills its worker process on one input fails
only that request (``worker_crashed``); the stream, the others and later streams go on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from worker_crash import PANIC, crash_beside_a_bystander

from streamer.client import stream_file

pytestmark = pytest.mark.e2e


async def test_a_worker_crash_fails_only_its_request(
    launch: Callable[..., Any], tmp_path: Path
) -> None:
    srv = launch(
        env={
            "STREAMER_INFERENCE__POOL": "process",
            "STREAMER_INFERENCE__WORKERS": "2",
            **PANIC,
        }
    )
    bystander = await crash_beside_a_bystander(srv, tmp_path)
    # The pool replaced the worker: a later stream is served in full.
    later = await stream_file(srv.ws(), bystander)
    assert later.ok and len(later.segments) == 4
    assert "lost" in srv.output()  # the server logged the lost worker
