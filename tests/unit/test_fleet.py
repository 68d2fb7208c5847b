"""The table the front-end processes share: admission counts every process's streams."""

from __future__ import annotations

import pytest

from streamer.app import build_services
from streamer.config import Settings
from streamer.errors import Overloaded
from streamer.fleet import Fleet
from streamer.pipeline import Route


def test_rows_are_written_by_their_process_and_read_by_all() -> None:
    fleet = Fleet(3)
    a, b = fleet.slot(0), fleet.slot(2)
    a.started(101)
    b.started(202)
    a.set_streams(4)
    b.set_streams(5)
    assert a.total_streams() == b.total_streams() == 9
    assert a.alive() == 2
    fleet.reset(0, restarted=True)
    assert fleet.total_streams() == 5
    rows = fleet.processes()
    assert rows[0] == {"index": 0, "pid": 0, "streams": 0, "shedding": False, "restarts": 1}
    with pytest.raises(IndexError):
        fleet.slot(3)


async def test_admission_counts_the_other_processes_streams() -> None:
    fleet = Fleet(2)
    other = fleet.slot(1)
    other.set_streams(2)
    settings = Settings.model_validate({"server": {"max_streams": 3}})
    services = build_services(settings, fleet=fleet.slot(0))
    services.admission.admit(Route.SIMPLE)  # 2 + 1 = 3: at the limit now
    assert fleet.processes()[0]["streams"] == 1
    with pytest.raises(Overloaded):
        services.admission.admit(Route.SIMPLE)
    assert services.admission.health()["status"] == "full"
    assert services.admission.health()["server_streams"] == 3
    other.set_streams(0)
    services.admission.admit(Route.SIMPLE)
    services.admission.stream_ended(Route.SIMPLE)
    assert fleet.processes()[0]["streams"] == 1
