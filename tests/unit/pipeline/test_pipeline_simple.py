"""One stream's pipeline on the simple route, without a server."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.audio.formats import AudioFormat
from streamer.events import Done, Event, SegmentResult, StreamError
from streamer.inference.model import TestModel
from streamer.inference.pool import ThreadPool
from streamer.inference.scheduler import Scheduler
from streamer.pipeline import Route, StreamOptions, StreamPipeline


def pcm16(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    return (rng.normal(0, 3000, n * channels)).astype("<i2").tobytes()


async def run_stream(
    data: bytes,
    fmt: AudioFormat,
    model: TestModel,
    *,
    splits: list[int] | None = None,
    chunk_seconds: float = 0.25,
    max_in_flight: int = 4,
    workers: int = 4,
) -> list[Event]:
    scheduler = Scheduler(ThreadPool(model, workers), sample_rate=model.sample_rate)
    scheduler.start()
    events: list[Event] = []
    options = StreamOptions(
        route=Route.SIMPLE,
        fmt=fmt,
        model_rate=model.sample_rate,
        chunk_seconds=chunk_seconds,
        max_in_flight=max_in_flight,
    )
    pipeline = StreamPipeline("s1", options, backend=scheduler, emit=events.append)
    pipeline.start()
    pos = 0
    for size in splits or [len(data)]:
        await pipeline.feed(data[pos : pos + size])
        pos += size
    await pipeline.feed(data[pos:])
    await pipeline.finish()
    await scheduler.close()
    return events


def check_contiguous(events: list[Event], channel: int) -> int:
    segments = [e for e in events if isinstance(e, SegmentResult) and e.channel == channel]
    assert segments, "no segments"
    assert segments[0].start == 0.0
    for a, b in itertools.pairwise(segments):
        assert a.end == b.start, "results out of order or with a gap"
    total = 0
    for s in segments:
        count = s.output["count"]
        assert count == round((s.end - s.start) * 16000)
        total += count
    return total


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
async def test_no_sample_is_lost_at_any_input_rate(rate: int) -> None:
    fmt = AudioFormat(channels=1, sample_rate=rate, bit_depth=16, is_float=False)
    data = pcm16(2.345, rate)
    events = await run_stream(data, fmt, TestModel.speedy(jitter=0.003, seed=1))
    total = check_contiguous(events, 0)
    n_in = len(data) // 2
    assert abs(total - n_in * 16000 / rate) <= 1
    done = events[-1]
    assert isinstance(done, Done)
    assert done.audio_seconds == pytest.approx(n_in / rate, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=7000), min_size=1, max_size=30))
def test_any_split_of_the_bytes_gives_the_same_results(splits: list[int]) -> None:
    fmt = AudioFormat(channels=2, sample_rate=16000, bit_depth=16, is_float=False)
    data = pcm16(1.3, 16000, channels=2, seed=3)
    whole = asyncio.run(run_stream(data, fmt, TestModel.speedy()))
    split = asyncio.run(run_stream(data, fmt, TestModel.speedy(), splits=splits))

    # Channels interleave depending on where frames end; each channel's results must not.
    def by_channel(events: list[Event]) -> dict[object, list[dict[str, object]]]:
        out: dict[object, list[dict[str, object]]] = {}
        for e in events:
            out.setdefault(getattr(e, "channel", None), []).append(dataclasses.asdict(e))
        return out

    assert by_channel(split) == by_channel(whole)


async def test_results_leave_in_audio_order_when_inferences_finish_out_of_order() -> None:
    fmt = AudioFormat(channels=3, sample_rate=16000, bit_depth=16, is_float=False)
    data = pcm16(3.0, 16000, channels=3)
    model = TestModel.speedy(jitter=0.02, seed=7)
    events = await run_stream(data, fmt, model, chunk_seconds=0.1, max_in_flight=8, workers=8)
    for channel in range(3):
        assert check_contiguous(events, channel) == 48000


async def test_model_failures_become_ordered_error_events_and_the_stream_goes_on() -> None:
    fmt = AudioFormat(channels=1, sample_rate=16000, bit_depth=16, is_float=False)
    data = pcm16(4.0, 16000)
    model = TestModel.speedy(failure_rate=0.3, panic_rate=0.1, seed=random.randrange(1000))
    events = await run_stream(data, fmt, model, chunk_seconds=0.1)
    results = [e for e in events if isinstance(e, SegmentResult | StreamError)]
    assert len(results) == 40
    times = [(e.start, e.end) for e in results]
    assert times == sorted(times)
    assert times[0][0] == 0.0 and times[-1][1] == 4.0
    codes = {e.code for e in results if isinstance(e, StreamError)}
    assert codes <= {"model_error", "model_crashed"}
    assert isinstance(events[-1], Done)


async def test_trailing_partial_frame_is_reported_not_silently_dropped() -> None:
    fmt = AudioFormat(channels=2, sample_rate=16000, bit_depth=16, is_float=False)
    data = pcm16(0.5, 16000, channels=2) + b"\x01\x02\x03"
    events = await run_stream(data, fmt, TestModel.speedy())
    errors = [e for e in events if isinstance(e, StreamError)]
    assert [e.code for e in errors] == ["incomplete_frame"]
    assert "3 bytes" in errors[0].message
    assert check_contiguous(events, 1) == 8000
