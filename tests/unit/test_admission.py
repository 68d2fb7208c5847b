"""Admission control: new streams are refused past the stream limit or the backlog."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.app import build_services
from streamer.config import Settings
from streamer.errors import Overloaded, ShuttingDown
from streamer.inference.process_pool import ProcessPool
from streamer.pipeline import Route


async def test_a_stream_over_the_limit_is_refused_and_health_says_full() -> None:
    services = build_services(Settings(server={"max_streams": 2}))
    services.admit(Route.SIMPLE)
    services.admit(Route.SEGMENTED)
    assert services.health()["status"] == "full"
    with pytest.raises(Overloaded, match="limit of 2 streams") as refused:
        services.admit(Route.SIMPLE)
    assert refused.value.code == "overloaded"
    assert services.live_streams == 2  # the refused stream was never counted
    services.stream_ended(Route.SIMPLE)
    assert services.health()["status"] == "ok"
    services.admit(Route.SIMPLE)


async def test_new_streams_are_refused_while_the_backlog_is_over_its_bound() -> None:
    services = build_services(Settings(server={"max_backlog": 3}))
    scheduler = services.scheduler  # not started: what is submitted stays queued
    for _ in range(4):
        scheduler.submit("busy", np.zeros(16, dtype=np.float32))
    with pytest.raises(Overloaded, match="inferences queued"):
        services.admit(Route.SEGMENTED)
    health = services.health()
    assert health["status"] == "full"
    assert health["queued_inferences"] == 4 and health["max_backlog"] == 3
    scheduler.cancel_stream("busy")
    services.admit(Route.SEGMENTED)


async def test_a_draining_server_refuses_with_shutting_down() -> None:
    services = build_services(Settings())
    services.draining.set()
    with pytest.raises(ShuttingDown):
        services.admit(Route.SIMPLE)
    assert services.health()["status"] == "draining"


async def test_the_process_pool_is_chosen_by_the_settings() -> None:
    services = build_services(Settings(inference={"pool": "process", "workers": 1}))
    try:
        assert isinstance(services.scheduler.pool, ProcessPool)
        assert services.scheduler.max_queued == 10000
    finally:
        await services.scheduler.pool.close()
