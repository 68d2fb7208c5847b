"""Admission control: new streams are refused past the stream limit or the backlog."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.app import build_services, create_app
from streamer.config import Settings
from streamer.errors import STREAM_LIMIT, Overloaded, ShuttingDown, StreamLimit
from streamer.inference.process_pool import ProcessPool
from streamer.observability.pressure import CPU_BUDGET, PRIOR_VAD_MULTIPLE, Ceilings, Pressure
from streamer.pipeline import Route
from streamer.policy import ANONYMOUS, Principal
from streamer.services import Services
from streamer.testing import ManualClock


async def test_a_stream_over_the_limit_is_refused_and_health_says_full() -> None:
    services = build_services(Settings(server={"max_streams": 2}))
    services.admission.admit(Route.SIMPLE)
    services.admission.admit(Route.SEGMENTED)
    assert services.admission.health()["status"] == "full"
    with pytest.raises(StreamLimit, match="limit of 2 streams") as refused:
        services.admission.admit(Route.SIMPLE)
    assert refused.value.code == "overloaded" and refused.value.reason == STREAM_LIMIT
    assert services.admission.live_streams == 2  # the refused stream was never counted
    services.admission.stream_ended(Route.SIMPLE)
    assert services.admission.health()["status"] == "ok"
    services.admission.admit(Route.SIMPLE)


async def test_new_streams_are_refused_while_the_backlog_is_over_its_bound() -> None:
    services = build_services(Settings(server={"max_backlog": 3}))
    scheduler = services.streams.scheduler  # not started: what is submitted stays queued
    for _ in range(4):
        scheduler.submit("busy", np.zeros(16, dtype=np.float32))
    with pytest.raises(Overloaded, match="inferences queued") as refused:
        services.admission.admit(Route.SEGMENTED)
    assert refused.value.reason is None  # behind, not at a limit: try later
    health = services.admission.health()
    assert health["status"] == "full"
    assert health["queued_inferences"] == 4 and health["max_backlog"] == 3
    scheduler.cancel_stream("busy")
    services.admission.admit(Route.SEGMENTED)


async def test_a_draining_server_refuses_with_shutting_down() -> None:
    services = build_services(Settings())
    services.draining.set()
    with pytest.raises(ShuttingDown):
        services.admission.admit(Route.SIMPLE)
    assert services.admission.health()["status"] == "draining"


async def test_the_process_pool_is_chosen_by_the_settings() -> None:
    services = build_services(Settings(inference={"pool": "process", "workers": 1}))
    try:
        assert isinstance(services.streams.scheduler.pool, ProcessPool)
        assert services.streams.scheduler.max_queued == 10000
    finally:
        await services.streams.scheduler.pool.close()


async def test_a_principal_past_its_quota_is_refused_and_others_are_not() -> None:
    services = build_services(Settings())
    limited = Principal(name="web-app", max_streams=2)
    services.admission.admit(Route.SIMPLE, limited, "s1")
    services.admission.admit(Route.SEGMENTED, limited, "s2")
    with pytest.raises(StreamLimit, match="web-app is at its quota of 2 concurrent streams"):
        services.admission.admit(Route.SIMPLE, limited, "s3")
    services.admission.admit(Route.SIMPLE, Principal(name="other", max_streams=2), "s4")
    services.admission.admit(Route.SIMPLE, ANONYMOUS, "s5")
    assert services.admission.live_streams == 4
    services.admission.stream_ended(Route.SIMPLE, "completed", "s1")  # its place is given back
    services.admission.admit(Route.SIMPLE, limited, "s6")
    assert services.admission.quota_use == {"web-app": 2, "other": 1}


async def test_a_token_s_quota_is_counted_beside_its_key_s() -> None:
    services = build_services(Settings())
    token = Principal(name="web-app", max_streams=3, quotas=(("token abc", 1),))
    services.admission.admit(Route.SIMPLE, token, "t1")
    with pytest.raises(StreamLimit, match="token abc is at its quota of 1"):
        services.admission.admit(Route.SIMPLE, token, "t2")
    services.admission.admit(Route.SIMPLE, Principal(name="web-app", max_streams=3), "k1")
    services.admission.stream_ended(Route.SIMPLE, "completed", "t1")
    services.admission.stream_ended(Route.SIMPLE, "completed", "k1")
    assert services.admission.quota_use == {} and services.admission.held == {}


def measured(settings: Settings) -> tuple[Services, ManualClock, ManualClock]:
    """Services whose pressure reads a clock and a CPU counter the test moves (``sample``
    takes the next second's sample)."""
    services = build_services(settings)
    clock, cpu = ManualClock(0.0), ManualClock(0.0)
    services.admission.pressure = Pressure(Ceilings(), clock=clock, cpu=cpu)
    clock.now, cpu.now = 1.0, 0.05  # an idle second: 0.05 of a core of upkeep
    services.admission.pressure.sample_cpu(services.admission.live_streams)
    return services, clock, cpu


async def test_within_the_estimate_new_streams_stop_once_the_spare_cpu_is_taken() -> None:
    services, clock, cpu = measured(Settings(server={"admit_within_estimate": True}))
    services.admission.admit(Route.SEGMENTED)
    services.admission.admit(Route.SEGMENTED)
    clock.now, cpu.now = 2.0, 0.1
    services.admission.pressure.sample_cpu(services.admission.live_streams)  # two came
    clock.now, cpu.now = 3.0, 0.1 + 0.3  # the two: 0.125 of a core each above upkeep
    services.admission.pressure.sample_cpu(services.admission.live_streams)
    assert services.admission.capacity() == 4  # (0.85 - 0.3) / 0.125 = 4.4
    services.admission.admit(Route.SEGMENTED)  # admitted since the sample: counted off the estimate
    assert services.admission.capacity() == 3
    for _ in range(3):
        services.admission.admit(Route.SEGMENTED)
    assert services.admission.capacity() == 0
    with pytest.raises(Overloaded, match="estimated capacity"):
        services.admission.admit(Route.SEGMENTED)
    assert services.admission.health()["status"] == "full"
    services.admission.stream_ended(Route.SEGMENTED)
    services.admission.admit(Route.SEGMENTED)


async def test_by_default_the_estimate_refuses() -> None:
    services, clock, cpu = measured(Settings())
    for _ in range(4):
        services.admission.admit(Route.SEGMENTED)
    clock.now, cpu.now = 2.0, 0.1
    services.admission.pressure.sample_cpu(services.admission.live_streams)  # four came
    clock.now, cpu.now = 3.0, 0.1 + 0.85  # 0.2 of a core each: nothing spare
    services.admission.pressure.sample_cpu(services.admission.live_streams)
    with pytest.raises(Overloaded, match="estimated capacity"):
        services.admission.admit(Route.SEGMENTED)
    assert services.admission.live_streams == 4


async def test_without_admit_within_estimate_the_estimate_does_not_refuse() -> None:
    services, clock, cpu = measured(Settings(server={"admit_within_estimate": False}))
    for _ in range(4):
        services.admission.admit(Route.SEGMENTED)
    clock.now, cpu.now = 2.0, 0.1
    services.admission.pressure.sample_cpu(services.admission.live_streams)  # four came
    clock.now, cpu.now = 3.0, 0.1 + 0.85  # 0.2 of a core each: nothing spare
    services.admission.pressure.sample_cpu(services.admission.live_streams)
    assert services.admission.capacity() == 0
    services.admission.admit(Route.SEGMENTED)
    assert services.admission.live_streams == 5


async def test_streams_that_detect_turns_are_charged_the_turn_engine_s_cpu() -> None:
    services = build_services(Settings(server={"admit_within_estimate": True}))
    admission = services.admission
    clock, cpu, turn = ManualClock(0.0), ManualClock(0.0), ManualClock(0.0)
    admission.pressure = Pressure(Ceilings(), clock=clock, cpu=cpu, turn_cpu=turn)
    clock.now, cpu.now = 1.0, 0.05
    admission.sample_cpu()  # idle: 0.05 of a core of upkeep
    admission.admit(Route.SEGMENTED, stream_id="plain")
    admission.admit(Route.SEGMENTED, stream_id="t1", turns=True)
    admission.admit(Route.SEGMENTED, stream_id="t2", turns=True)
    assert admission.turn_streams == 2
    clock.now, cpu.now = 2.0, 0.1
    admission.pressure.sample_cpu(3)  # three came (the engine not yet called)
    # Three streams at 0.03 core each, and the engine's 0.3 core for the two with turns.
    clock.now, turn.now = 3.0, 0.3
    cpu.now = 0.1 + 0.05 + 3 * 0.03 + 0.3
    admission.sample_cpu()
    assert admission.pressure.cost_per_stream == pytest.approx(0.03)
    assert admission.pressure.turn_cost_per_stream == pytest.approx(0.15)
    assert admission.capacity() == 13  # (0.85 - 0.44) / 0.03 = 13.7
    assert admission.capacity(turns=True) == 2  # / (0.03 + 0.15) = 2.3
    health = admission.health()
    assert (health["capacity"], health["turn_capacity"], health["turn_streams"]) == (13, 2, 2)
    admission.admit(Route.SEGMENTED, stream_id="t3", turns=True)
    admission.admit(Route.SEGMENTED, stream_id="t4", turns=True)
    with pytest.raises(Overloaded, match="estimated capacity"):
        admission.admit(Route.SEGMENTED, stream_id="t5", turns=True)
    admission.admit(Route.SEGMENTED, stream_id="p2")  # a plain stream still has room
    admission.stream_ended(Route.SEGMENTED, "completed", "t1")
    assert admission.turn_streams == 3 and "t1" not in admission.turning


async def test_a_fresh_server_holds_a_burst_to_the_capacity_its_vad_cost_allows() -> None:
    settings = Settings.model_validate({"server": {"host": "127.0.0.1", "grpc_port": 0}})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        admission = app.state.services.admission
        pressure = admission.pressure
        assert pressure is not None and pressure.cost_per_stream is None  # nothing measured
        per_frame = app.state.services.streams.vad.cost_per_frame()
        # The prior: the VAD model's CPU for a second of audio, times the multiple.
        prior = pressure.prior_cost
        assert prior is not None
        assert prior / (PRIOR_VAD_MULTIPLE * 31.25 * per_frame) == pytest.approx(1, rel=0.5)
        assert pressure.budget == pytest.approx(CPU_BUDGET)  # one process: one core's share
        room = admission.capacity()
        assert 0 < room < settings.server.max_streams  # the CPU, not the ceiling, decides
        # A burst, all before the first CPU sample: admitted up to the estimate, then refused.
        for _ in range(room):
            admission.admit(Route.SEGMENTED)
        with pytest.raises(Overloaded, match="estimated capacity"):
            admission.admit(Route.SEGMENTED)
        assert admission.health()["status"] == "full"
