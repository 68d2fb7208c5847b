"""The TTFS benchmark's client side: Pipecat's VAD decisions and the percentiles."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from streamer.segmentation.vad import SileroVad

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/bench_ttfs.py, which is a script, not a package module."""
    spec = importlib.util.spec_from_file_location(
        "bench_ttfs", ROOT / "benchmarks" / "bench_ttfs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ttfs"] = module
    spec.loader.exec_module(module)
    return module


def test_the_vad_table_names_a_next_state_for_every_state_and_frame(bench: ModuleType) -> None:
    states = (bench.QUIET, bench.STARTING, bench.SPEAKING, bench.STOPPING)
    assert set(bench.STEP) == set(itertools.product(states, (True, False)))
    assert {next_state for next_state, _ in bench.STEP.values()} <= set(states)


def test_the_vad_stops_once_after_each_sentence(bench: ModuleType) -> None:
    # cross_8k.wav then big_dog_8k.wav, a second of silence after each.
    audio, said = bench.medley(2, 1)
    audio = audio[: int(7.5 * bench.RATE)]
    stops = bench.vad_stops(audio, SileroVad())
    assert said.startswith("They took the cross town bus.")
    # One stop per sentence: 6 frames (192 ms) of non-speech after its last speech frame,
    # before the next recording begins (cross_8k.wav: 0-3.0 s; big_dog_8k.wav: 4.0-6.5 s).
    seconds = [stop / bench.RATE for stop in stops]
    assert len(seconds) == 2, seconds
    assert 1.5 <= seconds[0] <= 4.0 and 5.0 <= seconds[1] <= 7.5, seconds


def test_silence_has_no_stop(bench: ModuleType) -> None:
    assert bench.vad_stops(np.zeros(3 * bench.RATE, dtype=np.float32), SileroVad()) == []


def test_percentiles_interpolate_linearly_in_milliseconds(bench: ModuleType) -> None:
    figures = bench.percentiles([0.1, 0.2, 0.3, 0.4, 1.0])
    assert figures == {"p50": 300, "p95": 880, "p99": 976, "max": 1000}
    assert bench.percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
