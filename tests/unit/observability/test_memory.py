"""Heap snapshots on request: none without the environment's say, loadable ones with it."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import pytest

from streamer.observability.memory import ENV_DIR, ENV_INTERVAL, snapshots_from_env


def test_no_snapshots_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DIR, raising=False)
    assert snapshots_from_env() is None
    assert not tracemalloc.is_tracing()


def test_snapshots_are_dumped_where_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "snapshots"))
    monkeypatch.setenv(ENV_INTERVAL, "0.01")
    stop = snapshots_from_env()
    assert isinstance(stop, threading.Event)
    try:
        assert tracemalloc.is_tracing()
        written = threading.Event()
        for _ in range(3000):  # until the thread has dumped one (30 s at most)
            if any((tmp_path / "snapshots").glob("*.snapshot")):
                written.set()
                break
            stop.wait(0.01)
        assert written.is_set()
    finally:
        stop.set()
        tracemalloc.stop()
    path = sorted((tmp_path / "snapshots").glob("*.snapshot"))[
        0
    ]  # complete: a later one exists or the thread stopped
    assert tracemalloc.Snapshot.load(str(path)).traces is not None
