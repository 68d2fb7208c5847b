"""The segmented route without a socket, a VAD engine or a loop: every split of the audio,
every order of the channels' VAD replies, and what the work says."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import soxr
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from streamer.events import Finalized, SpeechEnded, SpeechStarted
from streamer.route.segmented import SegmentedRoute
from streamer.route.work import Adopt, Infer, Post, Withdraw, Work
from streamer.segmentation import segmenter
from streamer.segmentation.segmenter import Paused, Resumed, Segment, Segmenter, VadParams

FRAME = 512
RATE = 16000
# Short enough that a few frames make a segment, with interims every two frames.
PARAMS = VadParams(
    min_speech_ms=64, min_silence_ms=96, speech_pad_ms=32, max_segment_s=1.0,
    interim_interval_s=0.064,
)  # fmt: skip
# Frame by frame: each frame's samples all equal its speech probability, so the fake VAD
# below is a function of the frame alone, as Silero is of the audio.
PROBS = [0, 0, 0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0, 0, 0, 0, 0.9, 0.9, 0.9, 0.9, 0.9, 0, 0, 0.9]
TAIL = 200  # a partial frame at the end


def stream(probs: Sequence[float] = PROBS, tail: int = TAIL) -> NDArray[np.float32]:
    frames = np.repeat(np.asarray(probs, dtype=np.float32), FRAME)
    return np.concatenate((frames, np.full(tail, 0.9, dtype=np.float32)))


def vad(frames: NDArray[np.float32]) -> NDArray[np.float32]:
    """The fake VAD: a frame's probability is its first sample."""
    return frames[:, 0].copy()


def route(channels: int = 1, **kw: bool) -> SegmentedRoute:
    return SegmentedRoute(
        channels,
        RATE,
        RATE,
        PARAMS,
        interim=kw.get("interim", True),
        **{k: v for k, v in kw.items() if k != "interim"},
    )


def run(
    samples: NDArray[np.float32],
    cuts: Sequence[int],
    *,
    finalize_at: int | None = None,
    interim: bool = True,
) -> list[Work]:
    """One channel split at ``cuts``, each message's frames answered at once."""
    r = route(interim=interim)
    work: list[Work] = []
    bounds = [0, *cuts, len(samples)]
    for index, (a, b) in enumerate(itertools.pairwise(bounds)):
        (frames,) = r.push(samples[None, a:b])
        work += r.segment(0, frames, vad(frames))
        if finalize_at == index:
            work += r.finalize()
    for channel, frames in enumerate(r.drain()):
        work += r.segment(channel, frames, vad(frames))
        work += r.end_channel(channel)
    return work


def described(work: Sequence[Work]) -> list[tuple[object, ...]]:
    """Work as plain values (audio by its samples), to compare runs."""
    out: list[tuple[object, ...]] = []
    for item in work:
        if isinstance(item, Infer):
            out.append(
                (
                    "infer",
                    item.key,
                    item.channel,
                    item.start,
                    item.end,
                    item.final,
                    item.forced,
                    item.audio.tobytes(),
                )
            )
        elif isinstance(item, Withdraw):
            out.append(("withdraw", item.key))
        elif isinstance(item, Adopt):
            out.append(("adopt", item.key, item.forced))
        else:
            out.append(("post", item.event))
    return out


def unkeyed(work: Sequence[Work]) -> list[tuple[object, ...]]:
    """``described`` without keys and channels: the route numbers its inferences itself."""
    out: list[tuple[object, ...]] = []
    for item in described(work):
        if item[0] == "infer":
            out.append(("infer", *item[3:]))
        elif item[0] in ("withdraw", "adopt"):
            out.append((item[0], *item[2:]))
        else:
            out.append(("post", dataclasses.replace(item[1], channel=0)))  # type: ignore[type-var]
    return out


def reference(samples: NDArray[np.float32], interim: bool = True) -> list[segmenter.Event]:
    """The segmenter alone over the whole channel: what the route must turn into work."""
    machine = Segmenter(PARAMS, interim=interim, sample_rate=RATE)
    whole = len(samples) // FRAME
    frames = samples[: whole * FRAME].reshape(whole, FRAME)
    events = machine.push_frames(frames, vad(frames))
    return [*events, *machine.flush(samples[whole * FRAME :])]


def check(work: Sequence[Work], rate: int = RATE) -> None:
    """What holds of any route's work, whatever the audio."""
    issued: dict[int, Infer] = {}
    open_interims: dict[int, int] = {}  # channel -> key of its live interim
    for item in work:
        if isinstance(item, Infer):
            assert item.key not in issued  # keys are unique
            issued[item.key] = item
            assert open_interims.get(item.channel) is None  # the older one was withdrawn
            if not item.final:
                open_interims[item.channel] = item.key
            assert item.end > item.start
            assert len(item.audio) == round(item.end * rate) - round(item.start * rate)
        elif isinstance(item, Withdraw):
            withdrawn = issued[item.key]
            assert not withdrawn.final  # a final is never withdrawn
            assert open_interims.pop(withdrawn.channel) == item.key


def test_the_work_is_the_segmenters_events_in_order() -> None:
    samples = stream()
    work = run(samples, [])
    check(work)
    expected: list[tuple[object, ...]] = []
    for event in reference(samples):
        if isinstance(event, Segment):
            expected.append(("segment", event.start / RATE, event.end / RATE, event.is_final))
        elif isinstance(event, segmenter.SpeechStarted):
            expected.append(("started", event.start / RATE))
        else:
            assert isinstance(event, segmenter.SpeechEnded)
            expected.append(("ended", event.end / RATE))
    got: list[tuple[object, ...]] = []
    for item in work:
        if isinstance(item, Infer):
            got.append(("segment", item.start, item.end, item.final))
        elif isinstance(item, Post) and isinstance(item.event, SpeechStarted):
            got.append(("started", item.event.time))
        elif isinstance(item, Post) and isinstance(item.event, SpeechEnded):
            got.append(("ended", item.event.time))
    assert got == expected
    assert sum(isinstance(w, Infer) and w.final for w in work) == 2
    assert any(isinstance(w, Withdraw) for w in work)


def cut_sets(length: int, step: int) -> Iterator[list[int]]:
    points = range(step, length, step)
    yield []
    for one in points:
        yield [one]
    yield from (list(pair) for pair in itertools.combinations(points, 2))


def test_every_split_into_up_to_three_messages_gives_the_same_work() -> None:
    samples = stream()
    whole = described(run(samples, []))
    for cuts in cut_sets(len(samples), 160):  # 10 ms steps: frames and halves of them
        assert described(run(samples, cuts)) == whole, cuts


@given(st.lists(st.integers(0, len(stream())), max_size=12), st.booleans())
def test_any_split_gives_the_same_work(cuts: list[int], interim: bool) -> None:
    samples = stream()
    assert described(run(samples, sorted(cuts), interim=interim)) == described(
        run(samples, [], interim=interim)
    )


def test_every_order_of_the_channels_vad_replies_gives_each_channel_the_same_work() -> None:
    left, right = stream(), stream(PROBS[::-1])
    both = np.stack((left, right))
    messages = [both[:, a : a + 1600] for a in range(0, both.shape[1], 1600)]
    counted = 0
    alone: list[list[tuple[object, ...]]] = []
    for channel in (0, 1):
        r = route()
        per: list[Work] = []
        for message in messages:
            (frames,) = r.push(message[channel][None, :])
            per += r.segment(0, frames, vad(frames))
        alone.append(unkeyed(per))
    # Replies come per channel in order; across channels, in any interleaving.
    n = len(messages)
    for order in itertools.combinations(range(2 * n), n):
        r = route(2)
        handed = [r.push(message) for message in messages]
        turns = [0 if i in order else 1 for i in range(2 * n)]
        nexts = [0, 0]
        work: list[Work] = []
        for channel in turns:
            frames = handed[nexts[channel]][channel]
            nexts[channel] += 1
            work += r.segment(channel, frames, vad(frames))
        check(work)
        for channel in (0, 1):
            mine = [
                w for w in work
                if (isinstance(w, Infer) and w.channel == channel)
                or (isinstance(w, Post) and getattr(w.event, "channel", None) == channel)
                or (isinstance(w, Withdraw) and any(
                    isinstance(i, Infer) and i.key == w.key and i.channel == channel for i in work
                ))
            ]  # fmt: skip
            assert unkeyed(mine) == alone[channel]
        counted += 1
    assert counted == len(list(itertools.combinations(range(2 * n), n)))


@pytest.mark.parametrize("at", range(len(PROBS) // 3 + 1))
def test_a_finalize_anywhere_closes_the_open_segment_and_the_stream_goes_on(at: int) -> None:
    samples = stream()
    cuts = list(range(1536, len(samples), 1536))
    r = SegmentedRoute(1, RATE, RATE, PARAMS, interim=True, mark_finalize=True)
    work: list[Work] = []
    after = 0
    bounds = [0, *cuts, len(samples)]
    for index, (a, b) in enumerate(itertools.pairwise(bounds)):
        (frames,) = r.push(samples[None, a:b])
        work += r.segment(0, frames, vad(frames))
        if index == at:
            forced = r.finalize()
            check(work + forced)
            finals = [w for w in forced if isinstance(w, Infer)]
            assert all(f.final and f.forced for f in finals)
            assert isinstance(forced[-1], Post) and forced[-1].event == Finalized(
                0, round(b / RATE, 6), len(finals)
            )
            work += forced
            after = len(work)
    for frames in r.drain():
        work += r.segment(0, frames, vad(frames))
    work += r.end_channel(0)
    check(work)
    spans = [(w.start, w.end) for w in work if isinstance(w, Infer) and w.final]
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    # Only what the finalize cut is marked; the segments after it are not.
    assert not any(isinstance(w, Infer) and w.forced for w in work[after:])


def run_at(rate: int, samples: NDArray[np.float32], cuts: Sequence[int]) -> list[Work]:
    r = SegmentedRoute(1, RATE, rate, PARAMS, interim=True)
    work: list[Work] = []
    for a, b in itertools.pairwise([0, *cuts, len(samples)]):
        (frames,) = r.push(samples[None, a:b])
        work += r.segment(0, frames, vad(frames))
    (frames,) = r.drain()
    work += r.segment(0, frames, vad(frames))
    return work + r.end_channel(0)


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 48000])
def test_segments_for_a_model_at_another_rate_are_cut_from_one_streaming_resampler(
    rate: int,
) -> None:
    # Speech up to the very end: the last segments are only whole once the filter is
    # flushed.
    samples = stream([*PROBS, *([0.9] * 6)])
    whole = soxr.resample(samples, RATE, rate).astype(np.float32)  # the same filter, at once
    work = run_at(rate, samples, [])
    check_at(work, rate)
    infers = [w for w in work if isinstance(w, Infer)]
    assert sum(w.final for w in infers) >= 2 and any(not w.final for w in infers)
    for item in infers:
        a, b = round(item.start * rate), round(item.end * rate)
        assert np.allclose(item.audio, whole[a:b], atol=1e-5)
    # Held or not, the work and its order are the same however the audio is split, and
    # the same as at 16 kHz but for the audio.
    for cuts in ([1600], [700, 5000], list(range(512, len(samples), 1024))):
        assert described(run_at(rate, samples, cuts)) == described(work)
    at_16k = run(samples, [])
    assert [d[:-1] for d in described(work)] == [d[:-1] for d in described(at_16k)]


def check_at(work: Sequence[Work], rate: int) -> None:
    issued: set[int] = set()
    for item in work:
        if isinstance(item, Infer):
            issued.add(item.key)
            assert len(item.audio) == round(item.end * rate) - round(item.start * rate)
        elif isinstance(item, Withdraw):
            assert item.key in issued  # never ahead of what it withdraws


def test_a_finalize_at_another_rate_releases_everything_held_and_the_stream_goes_on() -> None:
    samples = stream()
    r = SegmentedRoute(1, RATE, 48000, PARAMS, interim=True, mark_finalize=True)
    (frames,) = r.push(samples[None, :5000])
    work = list(r.segment(0, frames, vad(frames)))
    forced = r.finalize()
    check(work + forced, 48000)
    assert isinstance(forced[-1], Post) and isinstance(forced[-1].event, Finalized)
    (frames,) = r.push(samples[None, 5000:])
    rest = list(r.segment(0, frames, vad(frames)))
    (frames,) = r.drain()
    rest += r.segment(0, frames, vad(frames))
    rest += r.end_channel(0)
    check(work + forced + rest, 48000)
    assert any(isinstance(w, Infer) and w.final for w in rest)


# -- speculative finals: decoded ahead at a pause, adopted only for the very same audio --


def run_speculating(
    samples: NDArray[np.float32],
    cuts: Sequence[int],
    *,
    speculate: bool,
    finalize_at: int | None = None,
    interim: bool = True,
) -> list[Work]:
    """One channel split at ``cuts``, each message's frames answered at once."""
    r = SegmentedRoute(
        1, RATE, RATE, PARAMS, interim=interim, mark_finalize=True, speculate=speculate
    )
    work: list[Work] = []
    bounds = [0, *cuts, len(samples)]
    for index, (a, b) in enumerate(itertools.pairwise(bounds)):
        (frames,) = r.push(samples[None, a:b])
        work += r.segment(0, frames, vad(frames))
        if finalize_at == index:
            work += r.finalize()
    for frames in r.drain():
        work += r.segment(0, frames, vad(frames))
    work += r.end_channel(0)
    return work


def resolved(work: Sequence[Work]) -> list[Work]:
    """The work as the stream sees it: each adopted speculative final in its ``Adopt``'s
    place (as a final, forced as the ``Adopt`` says), withdrawn ones gone; checks on the
    way that every speculative final is adopted or withdrawn exactly once."""
    aside: dict[int, Infer] = {}
    out: list[Work] = []
    for item in work:
        if isinstance(item, Infer) and item.speculative:
            assert item.final and not item.forced
            aside[item.key] = item
        elif isinstance(item, Adopt):
            infer = aside.pop(item.key)
            out.append(
                Infer(
                    infer.key, infer.channel, infer.start, infer.end, infer.audio,
                    final=True, forced=item.forced,
                )
            )  # fmt: skip
        elif isinstance(item, Withdraw) and item.key in aside:
            del aside[item.key]
        else:
            out.append(item)
    assert not aside  # none left undecided
    return out


def test_a_pause_that_resumes_is_withdrawn_and_the_one_that_ends_is_adopted() -> None:
    samples = stream()
    work = run_speculating(
        samples, list(range(1536, len(samples), 1536)), speculate=True, interim=False
    )
    speculative = [w.key for w in work if isinstance(w, Infer) and w.speculative]
    adopted = [w.key for w in work if isinstance(w, Adopt)]
    withdrawn = [w.key for w in work if isinstance(w, Withdraw)]
    plain = [w for w in work if isinstance(w, Infer) and w.final and not w.speculative]
    # PROBS: a one-frame dip (0.2) inside the first segment (withdrawn), three silent
    # frames that end it (adopted), then a two-frame pause inside the second (withdrawn),
    # which the end of the audio closes in speech: that final is decoded as ever.
    assert (speculative, withdrawn, adopted) == ([1, 2, 3], [1, 3], [2])
    assert len(plain) == 1 and plain[0].end == round(len(samples) / RATE, 6)


def test_a_finalize_in_a_pause_adopts_the_speculative_final_as_the_forced_one() -> None:
    samples = stream([0, 0.9, 0.9, 0.9, 0.9, 0, 0], tail=0)
    work = run_speculating(samples, [len(samples)], speculate=True, finalize_at=0, interim=False)
    # The pause's padding (one frame) was in when the finalize came: its speculative
    # final is the forced one, and nothing else is decoded.
    finals = [w for w in work if isinstance(w, Infer) and w.final]
    assert len(finals) == 1 and finals[0].speculative
    assert [w for w in work if isinstance(w, Adopt)] == [Adopt(finals[0].key, forced=True)]
    assert isinstance(work[-1], Post)


@given(
    cuts=st.lists(st.integers(1, len(stream()) - 1), max_size=4, unique=True).map(sorted),
    at=st.integers(0, 4),
    interim=st.booleans(),
)
def test_speculation_never_changes_the_finals_or_their_audio(
    cuts: list[int], at: int, interim: bool
) -> None:
    samples = stream()
    plain = run_speculating(samples, cuts, speculate=False, finalize_at=at, interim=interim)
    ahead = run_speculating(samples, cuts, speculate=True, finalize_at=at, interim=interim)
    # The same finals (forced alike), interims, withdrawals and events in the same order,
    # over the same samples: a deterministic model gives the same text.
    assert unkeyed(resolved(ahead)) == unkeyed(plain)


@pytest.mark.parametrize("pad_ms", [0, 32, 64])
def test_the_segmenter_announces_the_cut_any_close_in_the_pause_makes(pad_ms: int) -> None:
    params = VadParams(min_speech_ms=64, min_silence_ms=96, speech_pad_ms=pad_ms)
    machine = Segmenter(params, speculate=True, sample_rate=RATE)
    probs = [0.9, 0.9, 0.9, 0.2, 0.2, 0.9, 0.9, 0, 0, 0, 0]  # a dip, then the end
    samples = stream(probs, tail=0)
    frames = samples.reshape(len(probs), -1)
    events = machine.push_frames(frames, vad(frames))
    kinds = [type(e) for e in events if isinstance(e, Paused | Resumed | Segment)]
    paused = [e for e in events if isinstance(e, Paused)]
    (final,) = [e for e in events if isinstance(e, Segment)]
    assert kinds == [Paused, Resumed, Paused, Segment]
    assert (paused[-1].start, paused[-1].end) == (final.start, final.end)
    assert np.array_equal(paused[-1].audio, final.audio)


@pytest.mark.parametrize("speculate_pad_ms", [0, 32])
def test_a_shorter_speculation_pad_ends_the_segment_where_the_pause_was_announced(
    speculate_pad_ms: int,
) -> None:
    params = VadParams(min_speech_ms=64, min_silence_ms=160, speech_pad_ms=96)
    machine = Segmenter(params, speculate=True, speculate_pad_ms=speculate_pad_ms)
    probs = [0.9, 0.9, 0.9, 0, 0, 0, 0, 0, 0]
    frames = stream(probs, tail=0).reshape(len(probs), -1)
    events = machine.push_frames(frames, vad(frames))
    (paused,) = [e for e in events if isinstance(e, Paused)]
    (final,) = [e for e in events if isinstance(e, Segment)]
    # Announced at the pause's first frame plus the pad, and the natural close (after
    # 160 ms) ends there too, not at the VAD's 96 ms padding.
    assert paused.end == 3 * FRAME + speculate_pad_ms * RATE // 1000
    assert (final.start, final.end) == (paused.start, paused.end)
    assert np.array_equal(final.audio, paused.audio)
    # Without speculation, the VAD's padding.
    plain = Segmenter(params).push_frames(frames, vad(frames))
    (plain_final,) = [e for e in plain if isinstance(e, Segment)]
    assert plain_final.end == 3 * FRAME + 96 * RATE // 1000
