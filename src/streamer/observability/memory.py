"""Heap snapshots for finding leaks: ``tracemalloc`` on from the start, a snapshot dumped
every ``interval`` seconds.

Off unless the environment asks for it (``STREAMER_TRACEMALLOC_DIR``, read by ``streamer
serve``): tracing every allocation costs memory and CPU. ``benchmarks/churn_soak.py``
turns it on and compares the first snapshot after warm-up with the last.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

ENV_DIR = "STREAMER_TRACEMALLOC_DIR"
"""Where to dump the snapshots (``<pid>-<n>.snapshot``); unset: no tracing."""
ENV_INTERVAL = "STREAMER_TRACEMALLOC_SECONDS"
"""Seconds between snapshots (default 30)."""
FRAMES = 8
"""Frames kept per allocation: enough to see which caller holds the memory."""


def start_snapshots(directory: Path, interval: float) -> threading.Event:
    """Trace allocations from now on and dump a snapshot into ``directory`` every
    ``interval`` seconds, on a thread of its own; set the returned event to stop."""
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    stop = threading.Event()

    def dump() -> None:
        count = 0
        while not stop.wait(interval):
            count += 1
            path = directory / f"{os.getpid()}-{count:04d}.snapshot"
            partial = path.with_suffix(".partial")
            tracemalloc.take_snapshot().dump(str(partial))
            os.replace(partial, path)  # a reader sees whole snapshots only

    threading.Thread(target=dump, name="tracemalloc-snapshots", daemon=True).start()
    return stop


def snapshots_from_env() -> threading.Event | None:
    """``start_snapshots`` where ``STREAMER_TRACEMALLOC_DIR`` asks for it."""
    directory = os.environ.get(ENV_DIR)
    if not directory:
        return None
    return start_snapshots(Path(directory), float(os.environ.get(ENV_INTERVAL, "30")))
