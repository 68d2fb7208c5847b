"""The segmenter's state machine, driven by synthetic probability sequences.

The audio is ``arange``: every sample holds its own index, so a segment's audio must be
exactly ``arange(start, end)``, which checks that no sample is lost, doubled or shifted.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from streamer.segmentation.segmenter import (
    Event,
    Segment,
    Segmenter,
    SpeechEnded,
    SpeechStarted,
    VadBounds,
    VadParams,
    clamp,
)

F = 512  # samples a frame
RATE = 16000
MS = RATE // 1000  # samples a millisecond
PAD = 200 * MS
SPEECH, SILENCE, MAYBE = 0.9, 0.1, 0.4  # above, below and between the two thresholds


def frames_from(first: int, count: int) -> NDArray[np.float32]:
    return np.arange(first, first + count * F, dtype=np.float32).reshape(count, F)


class Feeder:
    """Feeds a segmenter ``arange`` audio frame by frame and records what each frame caused."""

    def __init__(self, params: VadParams | None = None, *, interim: bool = False) -> None:
        self.seg = Segmenter(params or VadParams(), interim=interim)
        self.events: list[Event] = []
        self.by_frame: list[list[Event]] = []

    def feed(self, *runs: tuple[float, int]) -> list[Event]:
        """Runs of (probability, frames); returns the events they caused."""
        caused: list[Event] = []
        for prob, count in runs:
            for frame in frames_from(self.seg.position, count):
                events = self.seg.push(frame, prob)
                self.by_frame.append(events)
                caused.extend(events)
        self.events.extend(caused)
        return caused

    def flush(self, tail: int = 0) -> list[Event]:
        pos = self.seg.position
        events = self.seg.flush(np.arange(pos, pos + tail, dtype=np.float32))
        self.events.extend(events)
        return events

    def finals(self) -> list[Segment]:
        return [e for e in self.events if isinstance(e, Segment) and e.is_final]


def check_grammar(events: list[Event], params: VadParams, rate: int = RATE) -> None:
    """Started, interims, Ended, final; audio is arange; segments ordered, disjoint, bounded."""
    open_start: int | None = None
    ended: int | None = None
    last_end = 0
    for event in events:
        if isinstance(event, SpeechStarted):
            assert open_start is None and ended is None
            assert event.start >= last_end
            open_start = event.start
        elif isinstance(event, SpeechEnded):
            assert open_start is not None and ended is None
            ended = event.end
        else:
            assert open_start is not None and event.start == open_start
            np.testing.assert_array_equal(
                event.audio, np.arange(event.start, event.end, dtype=np.float32)
            )
            assert event.end - event.start <= round(params.max_segment_s * rate)
            if event.is_final:
                assert ended == event.end and event.end > event.start
                last_end, open_start, ended = event.end, None, None
            else:
                assert ended is None


def spans(events: list[Event]) -> list[tuple[int, int]]:
    return [(e.start, e.end) for e in events if isinstance(e, Segment) and e.is_final]


def test_one_utterance_gives_started_ended_final_with_padding() -> None:
    f = Feeder()
    f.feed((SILENCE, 20), (SPEECH, 30), (SILENCE, 40))
    start, end = 20 * F - PAD, 50 * F + PAD
    assert [type(e) for e in f.events] == [SpeechStarted, SpeechEnded, Segment]
    assert f.events[0] == SpeechStarted(start)
    assert f.events[1] == SpeechEnded(end)
    assert spans(f.events) == [(start, end)]
    check_grammar(f.events, f.seg.params)


def test_speech_is_announced_when_min_speech_is_reached() -> None:
    f = Feeder(VadParams(min_speech_ms=250))  # 7.8 frames: the 8th frame confirms
    f.feed((SILENCE, 10), (SPEECH, 8))
    assert [i for i, events in enumerate(f.by_frame) if events] == [17]
    assert f.by_frame[17] == [SpeechStarted(10 * F - PAD)]
    assert f.seg.active


def test_short_blips_are_dropped() -> None:
    f = Feeder(VadParams(min_speech_ms=250))
    f.feed((SILENCE, 10), (SPEECH, 7), (SILENCE, 40), (SPEECH, 3), (SILENCE, 40))
    assert f.events == []
    assert f.flush() == []


def test_hysteresis_between_thresholds_keeps_the_current_state() -> None:
    f = Feeder()
    # Between the thresholds: no start from silence.
    f.feed((SILENCE, 5), (MAYBE, 40))
    assert f.events == []
    # Once speaking, in-between frames are still speech however long they last.
    f.feed((SPEECH, 10), (MAYBE, 100))
    assert [type(e) for e in f.events] == [SpeechStarted]
    # In a pause, in-between frames do not cancel it: the pause began at the silent frame.
    pause = f.seg.position
    f.feed((SILENCE, 2), (MAYBE, 30))
    assert spans(f.events) == [(45 * F - PAD, pause + PAD)]
    check_grammar(f.events, f.seg.params)


def test_exit_threshold_defaults_to_threshold_minus_hysteresis() -> None:
    assert VadParams().exit_threshold == pytest.approx(0.35)
    assert VadParams(threshold=0.1).exit_threshold == pytest.approx(0.01)
    assert VadParams(neg_threshold=0.2).exit_threshold == 0.2
    f = Feeder(VadParams(threshold=0.6, neg_threshold=0.59))
    f.feed((0.65, 20), (0.58, 16))  # 16 frames >= 500 ms below the exit threshold
    assert len(f.finals()) == 1


def test_pauses_shorter_than_min_silence_do_not_split() -> None:
    f = Feeder(VadParams(min_silence_ms=500))  # 15.6 frames
    f.feed((SPEECH, 20), (SILENCE, 15), (SPEECH, 20), (SILENCE, 15), (SPEECH, 20))
    assert f.finals() == []
    f.feed((SILENCE, 15))
    assert f.finals() == []
    f.feed((SILENCE, 1))  # the 16th silent frame reaches 512 ms
    assert spans(f.events) == [(0, 90 * F + PAD)]
    assert f.by_frame[-1] == f.events[-2:]


def test_a_longer_pause_splits_and_padding_is_clipped_to_the_previous_end() -> None:
    params = VadParams(min_silence_ms=500, speech_pad_ms=500)  # padding fills the pause
    f = Feeder(params)
    f.feed((SPEECH, 20), (SILENCE, 17), (SPEECH, 20), (SILENCE, 17))
    first_end = 20 * F + 500 * MS
    assert spans(f.events) == [(0, first_end), (first_end, 57 * F + 500 * MS)]
    check_grammar(f.events, params)


def test_padding_is_clipped_at_the_start_of_the_stream() -> None:
    f = Feeder()
    f.feed((SILENCE, 3), (SPEECH, 20), (SILENCE, 20))
    assert spans(f.events) == [(0, 23 * F + PAD)]


@pytest.mark.parametrize("pad_ms", [0, 30, 200, 500])
def test_padding_takes_audio_from_before_the_speech(pad_ms: int) -> None:
    params = VadParams(speech_pad_ms=pad_ms)
    f = Feeder(params)
    f.feed((SILENCE, 50), (SPEECH, 20), (SILENCE, 20))
    assert spans(f.events) == [(50 * F - pad_ms * MS, 70 * F + pad_ms * MS)]
    check_grammar(f.events, params)


def test_max_length_splits_speech_into_contiguous_segments() -> None:
    params = VadParams(max_segment_s=2.0)
    f = Feeder(params)
    f.feed((SILENCE, 10), (SPEECH, 280), (SILENCE, 20))  # 8.96 s of speech
    got = spans(f.events)
    assert len(got) == 5
    assert got[0][0] == 10 * F - PAD and got[-1][1] == 290 * F + PAD
    assert all(a[1] == b[0] for a, b in itertools.pairwise(got))
    assert all(end - start <= 2 * RATE for start, end in got)
    # The frame that would outgrow the limit ends the segment; the next one, still speech,
    # starts the next segment at once, with no padding.
    ends = [i for i, events in enumerate(f.by_frame) if SpeechEnded(got[0][1]) in events]
    assert [type(e) for e in f.by_frame[ends[0]]] == [SpeechEnded, Segment]
    assert f.by_frame[ends[0] + 1] == [SpeechStarted(got[0][1])]
    check_grammar(f.events, params)


def test_max_length_split_followed_by_silence_or_the_end_opens_nothing() -> None:
    params = VadParams(max_segment_s=2.0)
    f = Feeder(params)
    f.feed((SPEECH, 62))  # 62 frames fill 2 s but for 512 samples: split
    assert spans(f.events) == [(0, 62 * F)]
    assert not f.seg.active
    assert f.flush(tail=100) == []
    g = Feeder(params)
    g.feed((SPEECH, 62), (MAYBE, 1), (SILENCE, 30))  # hysteresis: in between still speaks
    assert spans(g.events) == [(0, 62 * F), (62 * F, 63 * F + PAD)]
    h = Feeder(params)
    h.feed((SPEECH, 62), (SILENCE, 30))
    assert spans(h.events) == [(0, 62 * F)]


def test_max_length_in_a_pause_ends_where_the_pause_does() -> None:
    params = VadParams(max_segment_s=2.0)  # 62.5 frames
    f = Feeder(params)
    f.feed((SPEECH, 55), (SILENCE, 10))
    assert spans(f.events) == [(0, 55 * F + PAD)]
    assert not f.seg.active
    f.feed((SILENCE, 10), (SPEECH, 20), (SILENCE, 20))
    assert spans(f.events)[1] == (75 * F - PAD, 95 * F + PAD)
    check_grammar(f.events, params)


def test_interim_segments_come_every_interval_and_not_in_pauses() -> None:
    params = VadParams(interim_interval_s=0.5)
    f = Feeder(params, interim=True)
    f.feed((SILENCE, 20), (SPEECH, 100), (SILENCE, 10), (SPEECH, 30), (SILENCE, 20))
    check_grammar(f.events, params)
    interims = [e for e in f.events if isinstance(e, Segment) and not e.is_final]
    start = 20 * F - PAD
    lengths = [e.end - start for e in interims]
    # One per 0.5 s of segment audio, at the first frame that reaches each multiple.
    assert [length // (RATE // 2) for length in lengths] == list(range(1, len(lengths) + 1))
    assert all(length % (RATE // 2) < F for length in lengths[:6])
    pause = (120 * F, 130 * F)
    assert not [e for e in interims if pause[0] < e.end <= pause[1]]
    final = f.finals()[0]
    for e in interims:
        np.testing.assert_array_equal(e.audio, final.audio[: e.end - e.start])


def test_no_interim_segments_unless_asked() -> None:
    f = Feeder(interim=False)
    f.feed((SPEECH, 200), (SILENCE, 20))
    assert [type(e) for e in f.events] == [SpeechStarted, SpeechEnded, Segment]


def test_flush_mid_speech_closes_at_the_end_of_the_audio_with_the_tail() -> None:
    f = Feeder()
    f.feed((SILENCE, 10), (SPEECH, 20))
    events = f.flush(tail=100)
    assert [type(e) for e in events] == [SpeechEnded, Segment]
    assert spans(events) == [(10 * F - PAD, 30 * F + 100)]
    assert not f.seg.active
    check_grammar(f.events, f.seg.params)


def test_flush_in_a_pause_ends_where_the_pause_and_padding_end() -> None:
    f = Feeder()
    f.feed((SPEECH, 20), (SILENCE, 3))
    assert spans(f.flush(tail=10)) == [(0, 20 * F + 3 * F + 10)]  # padding cut by the end
    g = Feeder()
    g.feed((SPEECH, 20), (SILENCE, 10))
    assert spans(g.flush()) == [(0, 20 * F + PAD)]


def test_flush_drops_a_pending_segment_and_ignores_a_tail_in_silence() -> None:
    f = Feeder()
    f.feed((SPEECH, 5))
    assert f.flush(tail=300) == []
    assert f.flush(tail=511) == []
    assert f.seg.position == 5 * F + 811


def test_flush_then_more_audio_keeps_counting_samples() -> None:
    params = VadParams()
    f = Feeder(params, interim=True)
    f.feed((SILENCE, 10), (SPEECH, 40))
    first = f.flush(tail=333)
    assert spans(first) == [(10 * F - PAD, 50 * F + 333)]
    # Speech goes on after a finalize: a new segment, padded back no further than the flush.
    f.feed((SPEECH, 20), (SILENCE, 20))
    assert spans(f.events)[1] == (50 * F + 333, 70 * F + 333 + PAD)
    f.feed((SILENCE, 10), (SPEECH, 20))
    f.flush(tail=7)
    assert spans(f.events)[2] == (100 * F + 333 - PAD, 120 * F + 340)
    assert f.seg.position == 120 * F + 340
    check_grammar(f.events, params)


def test_frames_and_tails_of_the_wrong_size_are_refused() -> None:
    seg = Segmenter(VadParams())
    with pytest.raises(ValueError, match="frame"):
        seg.push(np.zeros(511, dtype=np.float32), 0.9)
    with pytest.raises(ValueError, match="tail"):
        seg.flush(np.zeros(512, dtype=np.float32))
    with pytest.raises(ValueError, match="probabilities"):
        seg.push_frames(frames_from(0, 2), np.zeros(3, dtype=np.float32))
    assert seg.position == 0


def test_push_frames_equals_pushing_one_by_one() -> None:
    rng = np.random.default_rng(7)
    probs = rng.choice([SPEECH, SILENCE, MAYBE], size=400, p=[0.5, 0.4, 0.1]).astype(np.float32)
    one = Segmenter(VadParams(min_silence_ms=200), interim=True)
    many = Segmenter(VadParams(min_silence_ms=200), interim=True)
    a = [e for i, p in enumerate(probs) for e in one.push(frames_from(i * F, 1)[0], float(p))]
    b = many.push_frames(frames_from(0, len(probs)), probs)
    assert [(type(e), getattr(e, "start", None), getattr(e, "end", None)) for e in a] == [
        (type(e), getattr(e, "start", None), getattr(e, "end", None)) for e in b
    ]


@pytest.mark.parametrize(
    "params",
    [
        VadParams(speech_pad_ms=600, min_silence_ms=500),
        VadParams(threshold=0.0),
        VadParams(threshold=0.5, neg_threshold=0.6),
        VadParams(min_silence_ms=0),
        VadParams(interim_interval_s=0.0),
        VadParams(max_segment_s=0.9),
    ],
    ids=repr,
)
def test_unworkable_parameters_are_refused(params: VadParams) -> None:
    with pytest.raises(ValueError):
        Segmenter(params)


def test_clamp_keeps_sane_values_and_bounds_the_rest() -> None:
    assert clamp(VadParams()) == VadParams()
    wild = VadParams(
        threshold=2.0,
        neg_threshold=-1.0,
        min_speech_ms=-5,
        min_silence_ms=10,
        speech_pad_ms=5000,
        max_segment_s=1e9,
        interim_interval_s=0.0,
    )
    b = VadBounds()
    got = clamp(wild, b)
    assert got.threshold == b.threshold_max
    assert got.neg_threshold == 0.01
    assert got.min_speech_ms == 0
    assert got.min_silence_ms == b.min_silence_ms_min
    assert got.speech_pad_ms == b.min_silence_ms_min  # never beyond the minimum silence
    assert got.max_segment_s == b.max_segment_s_max
    assert got.interim_interval_s == b.interim_interval_s_min
    assert clamp(VadParams(threshold=0.6, neg_threshold=0.9)).neg_threshold == 0.6
    Segmenter(got)


def test_clamp_makes_room_for_a_confirmation_before_a_split() -> None:
    got = clamp(
        VadParams(min_speech_ms=2000, min_silence_ms=5000, speech_pad_ms=1000, max_segment_s=1)
    )
    assert got.max_segment_s == pytest.approx(8.1)
    Segmenter(got)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (VadParams(threshold=math.nan), "threshold"),
        (VadParams(neg_threshold=math.inf), "neg_threshold"),
        (VadParams(max_segment_s=math.inf), "max_segment_s"),
        (VadParams(interim_interval_s=-math.inf), "interim_interval_s"),
    ],
)
def test_clamp_refuses_values_that_are_not_numbers(params: VadParams, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        clamp(params)


knobs = st.builds(
    VadParams,
    threshold=st.sampled_from([0.3, 0.5, 0.8]),
    min_speech_ms=st.sampled_from([0, 64, 250]),
    min_silence_ms=st.sampled_from([100, 300, 500]),
    speech_pad_ms=st.sampled_from([0, 30, 100]),
    max_segment_s=st.sampled_from([1.0, 2.0, 30.0]),
    interim_interval_s=st.sampled_from([0.1, 0.5]),
)
probability_runs = st.lists(
    st.tuples(st.floats(0.0, 1.0), st.integers(1, 40)), min_size=1, max_size=30
)


@settings(max_examples=150, deadline=None)
@given(
    params=knobs,
    runs=st.lists(probability_runs, min_size=1, max_size=3),
    tails=st.lists(st.integers(0, F - 1), min_size=3, max_size=3),
    interim=st.booleans(),
)
def test_any_probabilities_give_well_formed_events(
    params: VadParams, runs: list[list[tuple[float, int]]], tails: list[int], interim: bool
) -> None:
    """Random sequences, flushed between parts: the grammar holds and no sample is lost."""
    f = Feeder(params, interim=interim)
    total = 0
    for part, tail in zip(runs, tails, strict=False):
        f.feed(*part)
        f.flush(tail)
        total += sum(count for _, count in part) * F + tail
        assert not f.seg.active
    assert f.seg.position == total
    check_grammar(f.events, params)


def _described(events: list[Event]) -> list[tuple[object, ...]]:
    """Each event's kind, its sample indices and its audio, to compare two runs exactly."""
    out: list[tuple[object, ...]] = []
    for event in events:
        audio = getattr(event, "audio", None)
        out.append(
            (
                type(event).__name__,
                getattr(event, "start", None),
                getattr(event, "end", None),
                getattr(event, "is_final", None),
                None if audio is None else audio.tolist(),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(
    params=knobs,
    runs=st.lists(
        st.tuples(st.sampled_from([0.05, 0.3, 0.45, 0.6, 0.95]), st.integers(1, 40)),
        min_size=1,
        max_size=20,
    ),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=20),
    interim=st.booleans(),
    speculate=st.booleans(),
)
def test_quiet_blocks_change_nothing_but_the_work_done(
    params: VadParams,
    runs: list[tuple[float, int]],
    sizes: list[int],
    interim: bool,
    speculate: bool,
) -> None:
    """Frames handed in blocks, each taken whole by ``push_quiet`` where it can be and
    frame by frame otherwise, give exactly the events (with the same block), audio and
    sample count that pushing every frame alone gives."""
    alone = Segmenter(params, interim=interim, speculate=speculate)
    blocks = Segmenter(params, interim=interim, speculate=speculate)
    probs = [p for p, count in runs for _ in range(count)]
    audio = frames_from(0, len(probs))
    expected: list[list[tuple[object, ...]]] = []
    got: list[list[tuple[object, ...]]] = []
    i = 0
    for size in itertools.cycle(sizes):
        if i >= len(probs):
            break
        block, chunk = audio[i : i + size], probs[i : i + size]
        caused = [e for frame, p in zip(block, chunk, strict=True) for e in alone.push(frame, p)]
        expected.append(_described(caused))
        if blocks.push_quiet(block, chunk):
            got.append([])
        else:
            got.append(
                _described(
                    [e for f, p in zip(block, chunk, strict=True) for e in blocks.push(f, p)]
                )
            )
        i += len(chunk)
        assert blocks.position == alone.position == i * F
    assert got == expected
    assert _described(blocks.flush()) == _described(alone.flush())


def test_push_quiet_takes_silence_and_ongoing_speech_and_refuses_a_change() -> None:
    seg = Segmenter(VadParams(min_speech_ms=64, min_silence_ms=300))
    assert seg.push_quiet(frames_from(0, 3), [SILENCE] * 3)
    assert seg.position == 3 * F
    assert not seg.push_quiet(frames_from(3 * F, 3), [SILENCE, SPEECH, SPEECH])
    assert seg.position == 3 * F  # nothing taken
    for frame in frames_from(3 * F, 3):
        seg.push(frame, SPEECH)
    assert seg.active
    assert seg.push_quiet(frames_from(6 * F, 3), [SPEECH, MAYBE, SPEECH])  # speech goes on
    assert not seg.push_quiet(frames_from(9 * F, 2), [SPEECH, SILENCE])  # a pause starts
    with pytest.raises(ValueError, match="frames must be"):
        seg.push_quiet(np.zeros((2, 100), dtype=np.float32), [SPEECH, SPEECH])
