"""The segmented pipeline with several channels: one message's channels share a VAD step."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import soundfile as sf
from model_factories import Loudness
from numpy.typing import NDArray

from streamer.audio.formats import AudioFormat
from streamer.events import Event, SegmentResult
from streamer.inference.model import Output
from streamer.inference.pool import ThreadPool
from streamer.inference.scheduler import Scheduler
from streamer.observability.gauges import SpeculationOutcome
from streamer.observability.stream import StreamObserver
from streamer.pipeline import Route, StreamBroken, StreamOptions, StreamPipeline
from streamer.segmentation.vad import SileroVad, VadEngine

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"
MESSAGE = 1600  # 100 ms a message at 16 kHz


def stereo() -> bytes:
    """harvard_16k.wav on the left, jfk.wav's first 10.8 s on the right, interleaved s16."""
    left, _ = sf.read(AUDIO / "harvard_16k.wav", dtype="int16")
    right, _ = sf.read(AUDIO / "jfk.wav", dtype="int16")
    return np.stack((left, right[: len(left)]), axis=1).tobytes()


async def run(vad: VadEngine, audio: bytes) -> list[Event]:
    scheduler = Scheduler(ThreadPool(Loudness(), 1), sample_rate=16000, max_batch=4)
    scheduler.start()
    events: list[Event] = []
    fmt = AudioFormat(channels=2, sample_rate=16000, bit_depth=16, is_float=False)
    options = StreamOptions(Route.SEGMENTED, fmt, 16000)
    pipeline = StreamPipeline("s", options, backend=scheduler, emit=events.append, vad=vad)
    pipeline.start()
    step = MESSAGE * 2 * 2  # both channels, two bytes a sample
    for at in range(0, len(audio), step):
        # A step interval of 20 s: a message whose channels were fed one by one would
        # wait that long for the second (the first has just sent frames and has none
        # waiting, so the engine would expect it).
        await asyncio.wait_for(pipeline.feed(audio[at : at + step]), 5)
    await pipeline.finish()
    await scheduler.close()
    return events


def spans(events: list[Event]) -> list[tuple[int, float, float]]:
    return [(e.channel, e.start, e.end) for e in events if isinstance(e, SegmentResult)]


async def test_a_messages_channels_share_one_vad_step() -> None:
    audio = stereo()
    with VadEngine(SileroVad(), min_interval=20.0) as waiting:
        got = await run(waiting, audio)
        messages = -(-len(audio) // (MESSAGE * 4))
        # One step a message (and none for the tail, which has no whole frame).
        assert waiting.steps_run <= messages
    with VadEngine(SileroVad()) as eager:
        expected = await run(eager, audio)
    assert spans(got) == spans(expected)
    assert {channel for channel, _, _ in spans(got)} == {0, 1}  # both channels have speech


async def test_a_model_at_another_rate_gets_each_segment_at_its_rate_with_interims() -> None:
    from streamer.inference.model import TestModel

    model = TestModel.speedy(sample_rate=24000)
    scheduler = Scheduler(ThreadPool(model, 1), sample_rate=24000, max_batch=4)
    scheduler.start()
    events: list[Event] = []
    fmt = AudioFormat(channels=2, sample_rate=16000, bit_depth=16, is_float=False)
    options = StreamOptions(Route.SEGMENTED, fmt, 24000, interim=True)
    audio = stereo()
    with VadEngine(SileroVad()) as vad:
        pipeline = StreamPipeline("s", options, backend=scheduler, emit=events.append, vad=vad)
        pipeline.start()
        for at in range(0, len(audio), MESSAGE * 4):
            await pipeline.feed(audio[at : at + MESSAGE * 4])
        await pipeline.finish()
    await scheduler.close()
    results = [e for e in events if isinstance(e, SegmentResult)]
    assert any(r.final for r in results) and any(not r.final for r in results)
    for result in results:
        assert result.output["count"] == round(result.end * 24000) - round(result.start * 24000)
    for channel in (0, 1):
        finals = [(r.start, r.end) for r in results if r.final and r.channel == channel]
        assert finals and finals == sorted(finals)


class Counted:
    """A model, counting the inputs it decodes."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = model.name
        self.sample_rate = model.sample_rate
        self.max_batch_size = model.max_batch_size
        self.decoded = 0

    def infer(self, audio: NDArray[np.float32]) -> Output:
        self.decoded += 1
        return cast(Output, self.model.infer(audio))

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        self.decoded += len(batch)
        return cast(list[Output | Exception], self.model.infer_batch(batch))


class Speculations(StreamObserver):
    def __init__(self) -> None:
        self.used = self.discarded = self.deferred = 0

    def speculated(self, outcome: SpeculationOutcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


class BehindScheduler(Scheduler):
    """A scheduler that says it is behind: a pipeline over it decodes nothing ahead."""

    @property
    def behind(self) -> bool:
        return True


async def speech_with_finalizes(
    model: Counted, speculate: bool, *, behind: bool = False
) -> tuple[list[Event], Counted, Speculations]:
    """jfk.wav in 100 ms messages with a finalize every 1.5 s (some in pauses, some in
    speech), as an agent's client sends them."""
    kind = BehindScheduler if behind else Scheduler
    scheduler = kind(ThreadPool(model, 1), sample_rate=16000, max_batch=4)
    scheduler.start()
    events: list[Event] = []
    fmt = AudioFormat(channels=1, sample_rate=16000, bit_depth=16, is_float=False)
    options = StreamOptions(Route.SEGMENTED, fmt, 16000, mark_finalize=True, speculate=speculate)
    observer = Speculations()
    audio, _ = sf.read(AUDIO / "jfk.wav", dtype="int16")
    data = audio.tobytes()
    with VadEngine(SileroVad()) as vad:
        pipeline = StreamPipeline(
            "s", options, backend=scheduler, emit=events.append, vad=vad, observer=observer
        )
        pipeline.start()
        for n, at in enumerate(range(0, len(data), MESSAGE * 2)):
            await pipeline.feed(data[at : at + MESSAGE * 2])
            if n % 15 == 14:
                await pipeline.finalize()
        await pipeline.finish()
    await scheduler.close()
    return events, model, observer


@pytest.mark.parametrize("model", ["loudness", "whisper"])
async def test_speculative_finals_send_exactly_what_plain_decodes_send(model: str) -> None:
    def made() -> Counted:
        if model == "loudness":
            return Counted(Loudness())
        from streamer.inference.whisper import WhisperRecognizer

        return Counted(WhisperRecognizer())  # the same text, alone or in any batch

    plain, plain_model, none = await speech_with_finalizes(made(), speculate=False)
    ahead, ahead_model, seen = await speech_with_finalizes(made(), speculate=True)
    finals = [e for e in ahead if isinstance(e, SegmentResult) and e.final]
    # Every final (forced or not), every Finalized and every other event in the same
    # order, each with the output of the same samples.
    assert ahead == plain
    assert any(f.forced for f in finals) and any(not f.forced for f in finals)
    assert seen.used > 0 and none.used == none.discarded == 0
    # An adopted speculative final is the final's only decode: the extra decodes are at
    # most the discarded ones (those a worker took before they were withdrawn).
    assert plain_model.decoded == len(finals)
    assert plain_model.decoded <= ahead_model.decoded <= plain_model.decoded + seen.discarded


async def test_speculative_finals_wait_for_their_final_while_the_model_is_behind() -> None:
    plain, plain_model, _ = await speech_with_finalizes(Counted(Loudness()), speculate=False)
    late, late_model, seen = await speech_with_finalizes(
        Counted(Loudness()), speculate=True, behind=True
    )
    # Nothing decoded ahead, so nothing decoded for nothing: each final decoded once, when
    # it was asked for, and the stream sees what it sees without speculation.
    assert late == plain
    assert seen.deferred > 0 and seen.used == 0
    assert late_model.decoded == plain_model.decoded


class HeldVad(SileroVad):
    """The real model, holding every call while ``hold`` is clear; failing every call
    once ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.hold.set()
        self.fail = False
        self.calls = 0

    def run(self, frames: Any, state: Any, context: Any) -> Any:
        assert self.hold.wait(10)
        self.calls += 1
        if self.fail:
            raise RuntimeError("the VAD model broke")
        return super().run(frames, state, context)


def mono_pipeline(vad: VadEngine, events: list[Event]) -> tuple[StreamPipeline, Scheduler]:
    scheduler = Scheduler(ThreadPool(Loudness(), 1), sample_rate=16000, max_batch=4)
    scheduler.start()
    fmt = AudioFormat(channels=1, sample_rate=16000, bit_depth=16, is_float=False)
    options = StreamOptions(Route.SEGMENTED, fmt, 16000)
    pipeline = StreamPipeline("s", options, backend=scheduler, emit=events.append, vad=vad)
    pipeline.start()
    return pipeline, scheduler


def jfk() -> bytes:
    audio, _ = sf.read(AUDIO / "jfk.wav", dtype="int16")
    return cast(bytes, audio.tobytes())


async def test_a_feed_waits_only_while_the_message_before_it_is_at_the_vad() -> None:
    """A message's probabilities come back while the client sends the next: a feed
    returns at once, unless the stream's previous message is still at the engine, so a
    sender faster than the engine stays one message ahead of it, and no further."""
    data = jfk()
    events: list[Event] = []
    model = HeldVad()
    with VadEngine(model) as vad:
        pipeline, scheduler = mono_pipeline(vad, events)
        model.hold.clear()
        await asyncio.wait_for(pipeline.feed(data[: MESSAGE * 2]), 5)  # at the engine
        second = asyncio.ensure_future(pipeline.feed(data[MESSAGE * 2 : MESSAGE * 4]))
        await asyncio.sleep(0.2)
        assert not second.done()  # the first is not back
        model.hold.set()
        await asyncio.wait_for(second, 5)
        for at in range(MESSAGE * 4, len(data), MESSAGE * 2):
            await pipeline.feed(data[at : at + MESSAGE * 2])
        await pipeline.finish()
    await scheduler.close()
    with VadEngine(SileroVad()) as vad:
        plain: list[Event] = []
        again, scheduler = mono_pipeline(vad, plain)
        await again.feed(data)  # one message: the same segments
        await again.finish()
    await scheduler.close()
    assert spans(events) == spans(plain) and spans(events)


async def test_a_vad_failure_breaks_the_stream_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = jfk()
    events: list[Event] = []
    model = HeldVad()
    with VadEngine(model) as vad:
        pipeline, scheduler = mono_pipeline(vad, events)
        await pipeline.feed(data[: MESSAGE * 2])
        await pipeline.finish()  # a healthy stream
        await scheduler.close()
        pipeline, scheduler = mono_pipeline(vad, events)
        model.fail = True
        await pipeline.feed(data[: MESSAGE * 2])  # its probabilities are not back yet
        await asyncio.wait_for(asyncio.shield(pipeline.failed), 5)  # its driver is told
        with pytest.raises(StreamBroken):
            await pipeline.feed(data[MESSAGE * 2 : MESSAGE * 4])
        with pytest.raises(StreamBroken):
            await pipeline.finalize()
        await pipeline.abort()
    await scheduler.close()
    assert "the VAD model broke" in caplog.text
