"""The server's CPU and streams per process: the arithmetic over a timeline, and the
process tree read from /proc."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from streamer.bench.runner import CpuMeter, per_process, server_estimate

ROOT, FRONT_A, FRONT_B, HELPER = 100, 101, 102, 103


def point(live: int, a: tuple[float, int], b: tuple[float, int]) -> dict[str, Any]:
    return {
        "live": live,
        "processes": [
            {"pid": ROOT, "cores": 0.01, "streams": None},
            {"pid": FRONT_A, "cores": a[0], "streams": a[1]},
            {"pid": FRONT_B, "cores": b[0], "streams": b[1]},
            {"pid": HELPER, "cores": 0.0, "streams": None},
        ],
    }


TIMELINE = [
    point(10, (0.1, 6), (0.1, 4)),
    point(100, (0.9, 70), (0.5, 30)),
    point(95, (1.0, 66), (0.4, 29)),
    point(40, (0.3, 25), (0.2, 15)),
]
CPU_0 = {ROOT: 1.0, FRONT_A: 2.0, FRONT_B: 2.0, HELPER: 0.1}
CPU_1 = {ROOT: 1.1, FRONT_A: 6.0, FRONT_B: 4.0, HELPER: 0.1}


def rows() -> dict[int, dict[str, Any]]:
    return {r["pid"]: r for r in per_process(TIMELINE, CPU_0, CPU_1, 4.0, ROOT)}


def test_each_process_gets_its_role() -> None:
    found = rows()
    assert [found[p]["role"] for p in (ROOT, FRONT_A, FRONT_B, HELPER)] == [
        "server",
        "front-end",
        "front-end",
        "helper",
    ]


def test_cpu_over_the_run_comes_from_the_two_readings() -> None:
    a = rows()[FRONT_A]
    assert a["cpu_seconds"] == pytest.approx(4.0)
    assert a["cores_mean"] == pytest.approx(1.0)
    assert a["cores_max_1s"] == pytest.approx(1.0)
    assert a["streams_max"] == 70


def test_the_plateau_is_where_nine_tenths_of_the_peak_were_live() -> None:
    found = rows()
    # live 100 and 95 are at least 90 (of 100); 10 and 40 are not.
    assert found[FRONT_A]["plateau_cores_mean"] == pytest.approx(0.95)
    assert found[FRONT_A]["plateau_streams_mean"] == pytest.approx(68)
    assert found[FRONT_B]["plateau_cores_mean"] == pytest.approx(0.45)
    assert found[FRONT_B]["plateau_streams_mean"] == pytest.approx(29.5)
    assert found[ROOT]["plateau_streams_mean"] is None


def test_a_process_that_started_during_the_run_counts_from_zero() -> None:
    late = {**CPU_1, 104: 0.5}
    found = {r["pid"]: r for r in per_process(TIMELINE, CPU_0, late, 4.0, ROOT)}
    assert found[104]["cpu_seconds"] == pytest.approx(0.5)
    assert found[104]["cores_max_1s"] is None  # never sampled


def test_an_empty_run_has_no_plateau() -> None:
    found = per_process([], {ROOT: 1.0}, {ROOT: 1.5}, 1.0, ROOT)
    assert found == [
        {
            "pid": ROOT,
            "role": "server",
            "cpu_seconds": 0.5,
            "cores_mean": 0.5,
            "cores_max_1s": None,
            "streams_max": None,
            "plateau_cores_mean": None,
            "plateau_streams_mean": None,
        }
    ]


@pytest.fixture
def family() -> Iterator[subprocess.Popen[bytes]]:
    """A process with a child of its own, both waiting on their standard input."""
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
        " stdout=subprocess.PIPE)\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    yield parent
    assert parent.stdin is not None
    parent.stdin.close()
    parent.wait(30)
    assert parent.stdout is not None
    parent.stdout.close()


def test_the_meter_splits_a_server_into_itself_and_each_child_with_its_own(
    family: subprocess.Popen[bytes],
) -> None:
    assert family.stdout is not None
    child = int(family.stdout.readline())  # printed once the child exists
    meter = CpuMeter(family.pid)
    parts = meter.by_process()
    assert parts is not None
    assert set(parts) == {family.pid, child}
    assert all(seconds >= 0 for seconds in parts.values())
    total = meter.seconds()
    assert total is not None and total >= sum(parts.values()) - 0.05


def test_the_meter_of_a_process_that_is_gone_reads_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert CpuMeter(gone.pid).by_process() is None


def test_the_servers_estimate_is_read_over_the_plateau() -> None:
    timeline = [
        {"live": 10, "estimated_spare": 500.0},
        {"live": 100},
        {"live": 100, "estimated_spare": 80.0},
        {"live": 95, "estimated_spare": 100.0},
        {"live": 30, "estimated_spare": 300.0},
    ]
    assert server_estimate(timeline) == {
        "readings": 4,
        "plateau_readings": 2,
        "plateau_live_mean": 97.5,
        "plateau_spare_mean": 90.0,
        "plateau_capacity": 187.5,
    }


def test_without_readings_on_the_plateau_there_is_no_estimate() -> None:
    timeline = [{"live": 10, "estimated_spare": 500.0}, {"live": 100}]
    assert server_estimate(timeline) == {
        "readings": 1,
        "plateau_readings": 0,
        "plateau_capacity": None,
    }
