"""VAD and segmenter together on real recordings.

The offline reference is the same ``Segmenter`` fed a whole file's frames at once; the
streaming runs cut the same audio into random chunks, as clients send it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from numpy.typing import NDArray

from streamer.audio.framing import Framer
from streamer.segmentation.segmenter import (
    Event,
    Segment,
    Segmenter,
    SpeechEnded,
    SpeechStarted,
    VadParams,
)
from streamer.segmentation.vad import FRAME_SAMPLES, VAD_SAMPLE_RATE, VadEngine

AUDIO = Path(__file__).parents[2] / "fixtures" / "audio"
RATE = VAD_SAMPLE_RATE
Samples = NDArray[np.float32]


@functools.cache
def speech(name: str) -> Samples:
    """A fixture file as float32 mono at 16 kHz (resampled once)."""
    audio, rate = sf.read(AUDIO / name, dtype="float32")
    if rate != RATE:
        audio = soxr.resample(audio, rate, RATE)
    return np.asarray(audio, dtype=np.float32)


@pytest.fixture(scope="module")
def engine() -> Iterator[VadEngine]:
    with VadEngine() as engine:
        yield engine


def probabilities(engine: VadEngine, audio: Samples) -> Samples:
    whole = len(audio) // FRAME_SAMPLES
    frames = audio[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES)
    return engine.probabilities_sync(engine.open_stream(), frames)


def offline(
    engine: VadEngine, audio: Samples, params: VadParams | None = None, *, interim: bool = False
) -> list[Event]:
    """The reference: every frame of the file at once, then the tail."""
    whole = len(audio) // FRAME_SAMPLES
    frames = audio[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES)
    segmenter = Segmenter(params or VadParams(), interim=interim)
    probs = engine.probabilities_sync(engine.open_stream(), frames)
    return segmenter.push_frames(frames, probs) + segmenter.flush(audio[whole * FRAME_SAMPLES :])


async def streamed(
    engine: VadEngine,
    audio: Samples,
    rng: np.random.Generator,
    params: VadParams | None = None,
    *,
    interim: bool = False,
) -> list[Event]:
    """Chunks of 1 sample to 1 s (log-uniform, so many are tiny), framed as they come."""
    framer = Framer(FRAME_SAMPLES)
    segmenter = Segmenter(params or VadParams(), interim=interim)
    stream = engine.open_stream()
    events: list[Event] = []
    pos = 0
    while pos < len(audio):
        size = int(np.exp(rng.uniform(0, np.log(RATE))))
        frames = framer.push(audio[pos : pos + size])
        pos += size
        if frames:
            block = np.stack(frames)
            events += segmenter.push_frames(block, await engine.probabilities(stream, block))
        await asyncio.sleep(0)
    assert framer.offset == segmenter.position
    return events + segmenter.flush(framer.take_tail())


def finals(events: list[Event]) -> list[Segment]:
    return [e for e in events if isinstance(e, Segment) and e.is_final]


def describe(events: list[Event]) -> list[tuple[str, int, int, bool]]:
    out = []
    for e in events:
        if isinstance(e, SpeechStarted):
            out.append(("started", e.start, e.start, False))
        elif isinstance(e, SpeechEnded):
            out.append(("ended", e.end, e.end, False))
        else:
            out.append(("segment", e.start, e.end, e.is_final))
    return out


def assert_same_events(got: list[Event], want: list[Event]) -> None:
    assert describe(got) == describe(want)
    for a, b in zip(got, want, strict=True):
        if isinstance(a, Segment) and isinstance(b, Segment):
            np.testing.assert_array_equal(a.audio, b.audio)


def silence(seconds: float, rng: np.random.Generator) -> Samples:
    """Near-silence: white noise 80 dB below full scale."""
    return rng.normal(0.0, 1e-4, round(seconds * RATE)).astype(np.float32)


def utterance_bounds(audio: Samples) -> tuple[int, int]:
    """Where speech starts and ends in a recording, from its energy envelope.

    The envelope is the mean power of 10 ms windows in dB; speech runs from the first to
    the last window within 38 dB of the loudest one. That level sits above the noise floor
    of every fixture (50 dB or more below its peak) and still takes in the weak onsets and
    word-final consonants; 36 to 39 dB give the same boundaries to within 50 ms.
    """
    window = RATE // 100
    count = len(audio) // window
    power = np.mean(audio[: count * window].reshape(count, window) ** 2, axis=1)
    level = 10 * np.log10(power + 1e-12)
    loud = np.flatnonzero(level >= level.max() - 38.0)
    return int(loud[0]) * window, (int(loud[-1]) + 1) * window


PLACED = ["big_dog_8k.wav", "front_center_48k.wav", "cross_8k.wav"]


def placed_utterances(seed: int = 5) -> tuple[Samples, list[tuple[int, int]]]:
    """Three real utterances, 2 s of near-silence between them; their true speech spans."""
    rng = np.random.default_rng(seed)
    parts = [silence(1.0, rng)]
    spans = []
    pos = len(parts[0])
    for name in PLACED:
        audio = speech(name)
        start, end = utterance_bounds(audio)
        spans.append((pos + start, pos + end))
        gap = silence(2.0, rng)
        parts += [audio, gap]
        pos += len(audio) + len(gap)
    return np.concatenate(parts), spans


async def test_streaming_in_random_chunks_equals_the_whole_file(engine: VadEngine) -> None:
    placed, _ = placed_utterances()
    inputs = [speech("jfk.wav"), speech("harvard_16k.wav"), placed]
    params = [VadParams(), VadParams(min_silence_ms=200, speech_pad_ms=100), VadParams()]
    want = [
        offline(engine, audio, p, interim=True) for audio, p in zip(inputs, params, strict=True)
    ]
    rng = np.random.default_rng(2024)
    for _ in range(2):
        got = await asyncio.gather(
            *(
                streamed(engine, audio, rng, p, interim=True)
                for audio, p in zip(inputs, params, strict=True)
            )
        )
        for have, expected in zip(got, want, strict=True):
            assert_same_events(have, expected)
    for audio, events in zip(inputs, want, strict=True):
        assert finals(events), "every input has speech"
        for seg in finals(events):  # no sample lost or moved
            np.testing.assert_array_equal(seg.audio, audio[seg.start : seg.end])


@pytest.mark.parametrize("name", ["jfk.wav", "harvard_16k.wav"])
def test_segments_cover_the_speech(engine: VadEngine, name: str) -> None:
    audio = speech(name)
    probs = probabilities(engine, audio)
    segments = finals(offline(engine, audio))
    covered = np.zeros(len(probs), dtype=bool)
    for seg in segments:
        covered[seg.start // FRAME_SAMPLES : -(-seg.end // FRAME_SAMPLES)] = True
    voiced = probs > 0.5
    assert covered[voiced].mean() > 0.95
    # Pauses of a second or more (jfk has two) are left out, but for their padding.
    silent = np.flatnonzero(probs < 0.35)
    runs = np.split(silent, np.flatnonzero(np.diff(silent) > 1) + 1)
    long_pauses = [run for run in runs if len(run) >= RATE // FRAME_SAMPLES]
    assert name != "jfk.wav" or len(long_pauses) >= 2
    for run in long_pauses:
        middle = run[len(run) // 2]
        assert not covered[middle], f"frame {middle} lies in a pause"
    first_voiced = int(np.argmax(voiced)) * FRAME_SAMPLES
    pad = VadParams().speech_pad_ms * RATE // 1000
    assert max(first_voiced - pad, 0) <= segments[0].start <= first_voiced


def test_noise_without_speech_gives_nothing(engine: VadEngine) -> None:
    assert offline(engine, speech("modem_noise_8k.wav"), interim=True) == []


@pytest.mark.parametrize("name", PLACED)
def test_a_short_utterance_is_one_segment(engine: VadEngine, name: str) -> None:
    audio = speech(name)
    events = offline(engine, audio, interim=True)
    assert len(finals(events)) == 1
    assert [type(e) for e in events if not isinstance(e, Segment)] == [
        SpeechStarted,
        SpeechEnded,
    ]


def test_placed_utterances_are_found_where_they_are(engine: VadEngine) -> None:
    audio, spans = placed_utterances()
    segments = finals(offline(engine, audio))
    assert len(segments) == len(spans)
    pad = VadParams().speech_pad_ms * RATE // 1000
    tolerance = RATE // 10  # 100 ms
    for seg, (start, end) in zip(segments, spans, strict=True):
        assert abs(seg.start + pad - start) <= tolerance, (seg.start, start)
        assert abs(seg.end - pad - end) <= tolerance, (seg.end, end)
