"""The Silero model and the engine that batches it across streams, on real speech."""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from numpy.typing import NDArray

from streamer.errors import ShuttingDown
from streamer.segmentation import vad
from streamer.segmentation.silero_model import SILERO_SHA256, sha256_of, silero_model_path
from streamer.segmentation.vad import (
    CONTEXT_SAMPLES,
    FRAME_SAMPLES,
    VAD_SAMPLE_RATE,
    SileroVad,
    VadEngine,
)

AUDIO = Path(__file__).parents[2] / "fixtures" / "audio"
Frames = NDArray[np.float32]


@functools.cache
def speech(name: str) -> Frames:
    """A fixture file as float32 mono at 16 kHz."""
    audio, rate = sf.read(AUDIO / name, dtype="float32")
    if rate != VAD_SAMPLE_RATE:
        audio = soxr.resample(audio, rate, VAD_SAMPLE_RATE)
    return np.asarray(audio, dtype=np.float32)


def framed(audio: Frames) -> Frames:
    whole = len(audio) // FRAME_SAMPLES
    return audio[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES)


def alone(model: SileroVad, frames: Frames) -> Frames:
    """The reference: one stream, one frame a call, batch of one."""
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)
    probs = []
    for frame in frames:
        prob, state, context = model.run(frame[None, :], state, context)
        probs.append(prob[0])
    return np.array(probs, dtype=np.float32)


class RecordingVad(SileroVad):
    """The real model, noting which thread ran each call and how many rows it had."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []
        self.rows: list[int] = []

    def run(self, frames: Frames, state: Frames, context: Frames) -> tuple[Frames, Frames, Frames]:
        self.threads.append(threading.current_thread().name)
        self.rows.append(len(frames))
        return super().run(frames, state, context)


class GatedVad(SileroVad):
    """The real model, holding every call until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, frames: Frames, state: Frames, context: Frames) -> tuple[Frames, Frames, Frames]:
        self.entered.set()
        assert self.release.wait(10)
        return super().run(frames, state, context)


POISON = 7.0


class FailingVad(SileroVad):
    """The real model, failing any call with a row full of ``POISON``."""

    def run(self, frames: Frames, state: Frames, context: Frames) -> tuple[Frames, Frames, Frames]:
        if (frames == POISON).all(axis=1).any():
            raise RuntimeError("poisoned frame")
        return super().run(frames, state, context)


@pytest.fixture(scope="module")
def model() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def reference() -> SileroVad:
    return SileroVad()


@pytest.fixture
def engine(model: SileroVad) -> Iterator[VadEngine]:
    with VadEngine(model) as engine:
        yield engine


# Twelve streams: every fixture with speech (and the modem noise), at different offsets.
STREAMS = [
    ("jfk.wav", 0, 96),
    ("jfk.wav", 12_345, 80),
    ("jfk.wav", 100_000, 60),
    ("harvard_16k.wav", 0, 96),
    ("harvard_16k.wav", 40_001, 90),
    ("harvard_16k.wav", 77_777, 70),
    ("big_dog_8k.wav", 0, 78),
    ("big_dog_8k.wav", 999, 40),
    ("cross_8k.wav", 0, 93),
    ("front_center_48k.wav", 0, 44),
    ("front_center_48k.wav", 3_000, 30),
    ("modem_noise_8k.wav", 50_000, 96),
]


def stream_frames(name: str, offset: int, count: int) -> Frames:
    return framed(speech(name)[offset:])[:count]


def random_chunks(frames: Frames, rng: np.random.Generator, most: int = 8) -> list[Frames]:
    chunks = []
    pos = 0
    while pos < len(frames):
        size = int(rng.integers(1, most + 1))
        chunks.append(frames[pos : pos + size])
        pos += size
    return chunks


def test_the_model_ships_in_this_package_unchanged_with_its_licence() -> None:
    path = silero_model_path()
    assert path.name == "silero_vad.onnx" and path.is_file()
    assert path.parent.parent == Path(vad.__file__).parent  # ours, not another package's
    assert sha256_of(path) == SILERO_SHA256
    licence = (path.parent / "LICENSE").read_text()
    assert "MIT License" in licence and "Silero Team" in licence
    assert SILERO_SHA256 in (path.parent / "README.md").read_text()


def test_model_rows_are_independent_and_context_is_the_frame_tail(model: SileroVad) -> None:
    frames = np.stack([stream_frames(name, 0, 20)[19] for name, _, _ in STREAMS[::3]])
    rows = len(frames)
    state = np.random.default_rng(1).normal(0, 0.1, (2, rows, 128)).astype(np.float32)
    context = np.random.default_rng(2).normal(0, 0.1, (rows, CONTEXT_SAMPLES)).astype(np.float32)
    probs, new_state, new_context = model.run(frames, state, context)
    assert probs.shape == (rows,) and new_state.shape == (2, rows, 128)
    np.testing.assert_array_equal(new_context, frames[:, -CONTEXT_SAMPLES:])
    for i in range(rows):
        p, s, _ = model.run(frames[i : i + 1], state[:, i : i + 1], context[i : i + 1])
        np.testing.assert_allclose(p, probs[i : i + 1], atol=1e-5)
        np.testing.assert_allclose(s[:, 0], new_state[:, i], atol=1e-5)


def test_model_refuses_wrong_shapes(model: SileroVad) -> None:
    frames = np.zeros((2, FRAME_SAMPLES), dtype=np.float32)
    state = np.zeros((2, 2, 128), dtype=np.float32)
    context = np.zeros((2, CONTEXT_SAMPLES), dtype=np.float32)
    with pytest.raises(ValueError, match="frames"):
        model.run(frames[:, :500], state, context)
    with pytest.raises(ValueError, match="state"):
        model.run(frames, state[:, :1], context)
    with pytest.raises(ValueError, match="context"):
        model.run(frames, state, context[:1])


async def test_batched_streams_equal_each_stream_alone(reference: SileroVad) -> None:
    model = RecordingVad()
    batches: list[tuple[int, float]] = []
    rng = np.random.default_rng(1234)
    inputs = [stream_frames(*spec) for spec in STREAMS]
    expected = [alone(reference, frames) for frames in inputs]

    with VadEngine(model, on_batch=lambda rows, seconds: batches.append((rows, seconds))) as eng:

        async def feed(frames: Frames) -> Frames:
            stream = eng.open_stream()
            out = []
            for chunk in random_chunks(frames, rng):
                out.append(await eng.probabilities(stream, chunk))
                await asyncio.sleep(0)
            return np.concatenate(out)

        got = await asyncio.gather(*(feed(frames) for frames in inputs))

    for spec, want, have in zip(STREAMS, expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-5, err_msg=str(spec))
    total = sum(len(frames) for frames in inputs)
    assert eng.frames_run == total == sum(rows for rows, _ in batches) == sum(model.rows)
    assert eng.batches_run == len(batches) == len(model.rows)
    assert max(model.rows) > 1, "concurrent streams should share calls"
    assert all(seconds > 0 for _, seconds in batches)
    # The model only ever ran on the engine's own thread, never on the event loop's.
    assert set(model.threads) == {eng.thread_name}
    assert eng.thread_name != threading.current_thread().name


@pytest.mark.parametrize("max_frames", [1, 3, 32])
async def test_backlogs_of_queued_requests_equal_each_stream_alone(
    reference: SileroVad, max_frames: int
) -> None:
    """Every stream queues all its chunks at once, so steps run several frames of each
    stream, across request boundaries, with streams of different lengths dropping out."""
    model = RecordingVad()
    rng = np.random.default_rng(max_frames)
    inputs = [stream_frames(*spec) for spec in STREAMS]
    expected = [alone(reference, frames) for frames in inputs]
    with VadEngine(model, max_frames=max_frames) as eng:

        async def feed(frames: Frames) -> Frames:
            stream = eng.open_stream()
            chunks = random_chunks(frames, rng, most=12)
            parts = await asyncio.gather(*(eng.probabilities(stream, c) for c in chunks))
            return np.concatenate(parts)

        got = await asyncio.gather(*(feed(frames) for frames in inputs))

    for spec, want, have in zip(STREAMS, expected, got, strict=True):
        np.testing.assert_allclose(have, want, atol=1e-5, err_msg=str(spec))
    total = sum(len(frames) for frames in inputs)
    assert eng.frames_run == total == sum(model.rows)
    longest = max(len(frames) for frames in inputs)
    # At least one step per max_frames frames of the longest stream; with max_frames > 1
    # far fewer steps than frames: a backlog is not held to one frame a step.
    assert eng.steps_run >= -(-longest // max_frames)
    if max_frames > 1:
        assert eng.steps_run < eng.batches_run


def test_a_lone_backlog_runs_max_frames_a_step(model: SileroVad, reference: SileroVad) -> None:
    frames = stream_frames("jfk.wav", 0, 96)
    with VadEngine(model, max_frames=32) as eng:
        got = eng.probabilities_sync(eng.open_stream(), frames)
    np.testing.assert_allclose(got, alone(reference, frames), atol=1e-5)
    assert (eng.steps_run, eng.batches_run, eng.frames_run) == (3, 96, 96)


async def test_a_lone_stream_does_not_wait_for_the_step_interval(
    model: SileroVad, reference: SileroVad
) -> None:
    """No other stream is sending, so a step interval of a minute delays nothing."""
    frames = stream_frames("harvard_16k.wav", 0, 40)
    with VadEngine(model, min_interval=60.0) as eng:
        stream = eng.open_stream()
        parts = [
            await asyncio.wait_for(eng.probabilities(stream, chunk), 20)
            for chunk in np.array_split(frames, 10)
        ]
    np.testing.assert_allclose(np.concatenate(parts), alone(reference, frames), atol=1e-5)


async def test_a_reset_behind_a_backlog_applies_between_its_frames(engine: VadEngine) -> None:
    frames = stream_frames("harvard_16k.wav", 0, 30)
    stream = engine.open_stream()
    first = asyncio.ensure_future(engine.probabilities(stream, frames))
    await asyncio.sleep(0)  # the frames are submitted; the reset goes in behind them
    stream.reset()
    again = asyncio.ensure_future(engine.probabilities(stream, frames))
    np.testing.assert_array_equal(await first, await again)


async def test_a_small_max_batch_rotates_through_all_streams(reference: SileroVad) -> None:
    model = RecordingVad()
    inputs = [stream_frames(*spec) for spec in STREAMS[:6]]
    with VadEngine(model, max_batch=4) as eng:
        streams = [eng.open_stream() for _ in inputs]
        got = await asyncio.gather(
            *(eng.probabilities(s, frames) for s, frames in zip(streams, inputs, strict=True))
        )
    assert max(model.rows) == 4
    for frames, have in zip(inputs, got, strict=True):
        np.testing.assert_allclose(have, alone(reference, frames), atol=1e-5)


async def test_calls_for_one_stream_run_in_order(engine: VadEngine, reference: SileroVad) -> None:
    frames = stream_frames("jfk.wav", 0, 60)
    stream = engine.open_stream()
    parts = await asyncio.gather(
        *(engine.probabilities(stream, chunk) for chunk in np.array_split(frames, 7))
    )
    np.testing.assert_allclose(np.concatenate(parts), alone(reference, frames), atol=1e-5)


async def test_reset_starts_the_stream_afresh(engine: VadEngine) -> None:
    frames = stream_frames("harvard_16k.wav", 0, 30)
    stream = engine.open_stream()
    first = await engine.probabilities(stream, frames)
    stream.reset()
    again = await engine.probabilities(stream, frames)
    np.testing.assert_array_equal(first, again)


async def test_cancelled_waits_still_advance_the_state(
    engine: VadEngine, reference: SileroVad
) -> None:
    frames = stream_frames("jfk.wav", 0, 40)
    stream = engine.open_stream()
    waiting = asyncio.create_task(engine.probabilities(stream, frames[:30]))
    await asyncio.sleep(0)
    waiting.cancel()
    rest = await engine.probabilities(stream, frames[30:])
    np.testing.assert_allclose(rest, alone(reference, frames)[30:], atol=1e-5)
    assert waiting.cancelled()


def test_sync_calls_go_through_the_engine(reference: SileroVad) -> None:
    model = RecordingVad()
    frames = stream_frames("big_dog_8k.wav", 0, 78)
    with VadEngine(model) as eng:
        got = eng.probabilities_sync(eng.open_stream(), frames)
        assert eng.probabilities_sync(eng.open_stream(), frames[:0]).shape == (0,)
    np.testing.assert_allclose(got, alone(reference, frames), atol=1e-5)
    assert set(model.threads) == {eng.thread_name}


async def test_bad_requests_are_refused(engine: VadEngine, model: SileroVad) -> None:
    stream = engine.open_stream()
    with pytest.raises(ValueError, match="frames"):
        await engine.probabilities(stream, np.zeros(FRAME_SAMPLES, dtype=np.float32))
    with pytest.raises(ValueError, match="frames"):
        await engine.probabilities(stream, np.zeros((2, 500), dtype=np.float32))
    with VadEngine(model) as other:
        with pytest.raises(ValueError, match="another engine"):
            await other.probabilities(stream, np.zeros((1, FRAME_SAMPLES), dtype=np.float32))
    empty = await engine.probabilities(stream, np.zeros((0, FRAME_SAMPLES), dtype=np.float32))
    assert empty.shape == (0,)
    idle = VadEngine(model)
    with pytest.raises(RuntimeError, match="not started"):
        await idle.probabilities(idle.open_stream(), np.zeros((1, 512), dtype=np.float32))


async def test_close_fails_waiting_requests_and_refuses_new_ones() -> None:
    model = GatedVad()
    eng = VadEngine(model)
    eng.start()
    assert eng.running
    frames = stream_frames("jfk.wav", 0, 5)
    first = eng.open_stream()
    running = asyncio.create_task(eng.probabilities(first, frames))
    # Wait until the engine is inside a model call for the first stream's first frame.
    assert await asyncio.to_thread(model.entered.wait, 10)
    queued = [asyncio.create_task(eng.probabilities(eng.open_stream(), frames)) for _ in range(3)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(asyncio.to_thread(eng.close))
    await asyncio.sleep(0.05)
    assert not closing.done(), "close waits for the call in progress"
    model.release.set()
    await asyncio.wait_for(closing, 10)
    assert not eng.running

    # The step in progress ran all five of the first stream's frames; the rest fail.
    assert (await running).shape == (5,)
    for task in queued:
        with pytest.raises(ShuttingDown, match="closed"):
            await task
    with pytest.raises(ShuttingDown):
        await eng.probabilities(first, frames)
    with pytest.raises(ShuttingDown):
        eng.start()
    eng.close()  # closing again does nothing


async def test_a_failing_model_call_fails_its_requests_only(reference: SileroVad) -> None:
    with VadEngine(FailingVad()) as eng:
        bad, good = eng.open_stream(), eng.open_stream()
        poison = np.full((3, FRAME_SAMPLES), POISON, dtype=np.float32)
        with pytest.raises(RuntimeError, match="poisoned"):
            await eng.probabilities(bad, poison)
        frames = stream_frames("jfk.wav", 0, 20)
        got = await eng.probabilities(good, frames)
        np.testing.assert_allclose(got, alone(reference, frames), atol=1e-5)
        assert eng.running


async def test_a_failing_batch_callback_does_not_stop_the_engine(model: SileroVad) -> None:
    def broken(rows: int, seconds: float) -> None:
        raise RuntimeError("metrics are down")

    with VadEngine(model, on_batch=broken) as eng:
        stream = eng.open_stream()
        for _ in range(3):
            frames = stream_frames("cross_8k.wav", 0, 4)
            assert (await eng.probabilities(stream, frames)).shape == (4,)
        assert eng.batches_run == 12


async def test_the_engine_keeps_no_stream_that_is_gone() -> None:
    # Streams that sent their frames and went away are not held by the engine (their
    # state with them), whether its steps wait for other streams or not.
    frames = stream_frames("jfk.wav", 0, 4)
    for min_interval in (0.0, 0.004):
        with VadEngine(SileroVad(), min_interval=min_interval) as eng:
            streams = [eng.open_stream() for _ in range(20)]
            await asyncio.gather(*(eng.probabilities(s, frames) for s in streams))
            gone = [weakref.ref(s) for s in streams]
            del streams
            if min_interval:
                await asyncio.sleep(vad.ACTIVE_WINDOW + 0.1)
                await eng.probabilities(eng.open_stream(), frames)  # one more step
            gc.collect()
            assert [ref() for ref in gone] == [None] * len(gone)


async def test_a_stream_sent_as_fast_as_answered_is_not_held_to_the_step_interval(
    model: SileroVad, reference: SileroVad
) -> None:
    """Beside a live stream, a sender that waits on the engine cuts each step's wait short."""
    frames = stream_frames("harvard_16k.wav", 0, 40)
    with VadEngine(model, min_interval=2.0) as eng:
        live, fast = eng.open_stream(), eng.open_stream()
        sent: list[asyncio.Future[Frames]] = []
        stop = asyncio.Event()

        async def paced() -> None:
            # A frame every 0.1 s, answered or not, as a live client sends: every step has
            # some of its frames, and after each the engine expects more.
            while not stop.is_set():
                sent.append(asyncio.ensure_future(eng.probabilities(live, frames[:1])))
                await asyncio.sleep(0.1)

        beside = asyncio.create_task(paced())
        await asyncio.sleep(0.3)
        parts = []
        # Held to the interval, ten calls take about 20 s; only the first, which does not
        # follow an answer, waits for it.
        async with asyncio.timeout(12):
            for chunk in np.array_split(frames, 10):
                parts.append(await eng.probabilities(fast, chunk))
        stop.set()
        await beside
        await asyncio.gather(*sent)
    np.testing.assert_allclose(np.concatenate(parts), alone(reference, frames), atol=1e-5)


async def test_the_engine_s_cpu_is_its_thread_s_and_the_model_s_cost_is_measured_here() -> None:
    with VadEngine(max_batch=64) as eng:
        assert eng.cost_per_frame() > 0  # on this thread: the engine's clock is not charged
        idle = eng.cpu_seconds
        stream = eng.open_stream()
        frames = framed(speech("jfk.wav"))
        began = time.thread_time()
        await eng.probabilities(stream, frames)
        mine = time.thread_time() - began
        used = eng.cpu_seconds - idle
    # The model ran those frames on the engine's thread: far more CPU there than here.
    assert used > 0 and used > mine
    final = eng.cpu_seconds  # the thread's own last reading, taken as it ended
    assert final >= idle + used and eng.cpu_seconds == final


async def test_submit_then_calls_back_on_the_loop_in_order_with_no_future(
    reference: SileroVad,
) -> None:
    """Each request's callback gets its probabilities on the loop's thread, a stream's in
    the order handed in, as ``probabilities`` would give them; the wait is reported."""
    frames = stream_frames("harvard_16k.wav", 0, 30)
    delays: list[float] = []
    got: list[tuple[tuple[str, int], object, str]] = []
    with VadEngine(SileroVad(), min_interval=0.004) as eng:
        eng.on_delay = delays.append
        one, two = eng.open_stream(), eng.open_stream()
        done = asyncio.Event()
        chunks = np.array_split(frames, 5)

        def then(index: tuple[str, int], result: object) -> None:
            got.append((index, result, threading.current_thread().name))
            if len(got) == 2 * len(chunks):
                done.set()

        for n, chunk in enumerate(chunks):
            eng.submit_then(
                [
                    (one, chunk, functools.partial(then, ("one", n))),
                    (two, chunk, functools.partial(then, ("two", n))),
                ]
            )
        await asyncio.wait_for(done.wait(), 10)
    assert {thread for _, _, thread in got} == {threading.current_thread().name}
    assert [n for (name, n), _, _ in got if name == "one"] == [0, 1, 2, 3, 4]
    firsts = [result for (name, _), result, _ in got if name == "one"]
    assert len(firsts) == len(chunks)
    np.testing.assert_allclose(
        np.concatenate(cast_frames(firsts)), alone(reference, frames), atol=1e-5
    )
    assert len(delays) == 2 * len(chunks) and min(delays) >= 0


def cast_frames(results: list[object]) -> list[Frames]:
    assert all(isinstance(r, np.ndarray) for r in results)
    return [r for r in results if isinstance(r, np.ndarray)]


async def test_submit_then_hands_a_failure_to_its_callback_and_survives_a_bad_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poison = np.full((2, FRAME_SAMPLES), POISON, dtype=np.float32)
    frames = stream_frames("jfk.wav", 0, 4)
    results: list[object] = []
    with VadEngine(FailingVad()) as eng:
        arrived = asyncio.Event()

        def keep(result: object) -> None:
            results.append(result)
            arrived.set()

        def broken(result: object) -> None:
            raise RuntimeError("the caller's bug")

        eng.submit_then([(eng.open_stream(), poison, keep)])
        await asyncio.wait_for(arrived.wait(), 10)
        assert isinstance(results[0], RuntimeError)
        arrived.clear()
        # A callback that raises is logged; the step's other callbacks still run.
        eng.submit_then([(eng.open_stream(), frames, broken), (eng.open_stream(), frames, keep)])
        await asyncio.wait_for(arrived.wait(), 10)
        assert isinstance(results[1], np.ndarray) and results[1].shape == (4,)
        assert "callback failed" in caplog.text
        with pytest.raises(ValueError, match="frames"):
            eng.submit_then([(eng.open_stream(), frames[:0], keep)])
        gated = GatedVad()
    with VadEngine(gated) as closing:
        arrived.clear()
        closing.submit_then([(closing.open_stream(), frames, keep)])
        assert await asyncio.to_thread(gated.entered.wait, 10)
        closing.submit_then([(closing.open_stream(), frames, keep)])  # behind the step
        closing.close(timeout=0)  # the stop is queued behind the second request
        gated.release.set()
        async with asyncio.timeout(10):
            while len(results) < 4:  # the callbacks run on this loop
                arrived.clear()
                await arrived.wait()
    # The one running finished; the one still waiting was told the engine closed.
    assert isinstance(results[2], np.ndarray)
    assert isinstance(results[3], ShuttingDown)
