"""Resampler: sines survive conversion, lengths add up, chunking never changes the output."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from streamer.audio.resample import ChannelResamplers, Resampler

OUT_RATE = 16000
MAX_LAG = 200


def sine(freqs: tuple[float, ...], rate: int, n: int) -> NDArray[np.float32]:
    t = np.arange(n) / rate
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    return np.asarray(x * 0.8, dtype=np.float32)


def stream(r: Resampler, x: NDArray[np.float32], chunk: int) -> NDArray[np.float32]:
    parts = [r.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    parts.append(r.flush())
    return np.concatenate(parts)


def stream_split(r: Resampler, x: NDArray[np.float32], cuts: list[int]) -> NDArray[np.float32]:
    points = [0, *sorted(cuts), len(x)]
    parts = [r.process(x[a:b]) for a, b in itertools.pairwise(points)]
    parts.append(r.flush())
    return np.concatenate(parts)


def aligned_correlation(y: NDArray[np.float32], ref: NDArray[np.float32]) -> tuple[float, int]:
    """Best Pearson correlation of ``y`` delayed by 0..MAX_LAG samples against ``ref``."""
    n = min(len(y), len(ref)) - MAX_LAG
    assert n > 0
    best = (-1.0, 0)
    for lag in range(MAX_LAG + 1):
        r = float(np.corrcoef(y[lag : lag + n], ref[:n])[0, 1])
        best = max(best, (r, lag))
    return best


@pytest.mark.parametrize("in_rate", [8000, 44100, 48000])
@pytest.mark.parametrize("freqs", [(440.0,), (1000.0,), (440.0, 1000.0)], ids=str)
def test_sine_survives_streaming_resampling(in_rate: int, freqs: tuple[float, ...]) -> None:
    n = in_rate  # one second
    y = stream(Resampler(in_rate, OUT_RATE), sine(freqs, in_rate, n), in_rate // 10)
    ref = sine(freqs, OUT_RATE, round(n * OUT_RATE / in_rate))
    corr, _ = aligned_correlation(y, ref)
    assert corr > 0.95
    # libsoxr compensates its filter delay, so the output lines up with the input as is.
    m = min(len(y), len(ref))
    assert np.corrcoef(y[:m], ref[:m])[0, 1] > 0.95


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    [
        (8000, 16000),
        (11025, 16000),
        (22050, 16000),
        (44100, 16000),
        (48000, 16000),
        (16000, 8000),
        (96000, 16000),
        (192000, 16000),
        (16000, 16001),
    ],
)
@pytest.mark.parametrize("n", [0, 1, 3, 799, 4410, 48000, 100003])
def test_length_after_flush(in_rate: int, out_rate: int, n: int) -> None:
    x = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    r = Resampler(in_rate, out_rate)
    y = stream(r, x, in_rate // 10)
    assert abs(len(y) - round(n * out_rate / in_rate)) <= 1
    assert r.samples_in == n
    assert r.samples_out == len(y)
    assert r.finished


@pytest.mark.parametrize("in_rate", [8000, 44100, 48000])
def test_streaming_equals_one_shot(in_rate: int) -> None:
    x = sine((440.0, 3000.0), in_rate, in_rate * 2)
    y = stream(Resampler(in_rate, OUT_RATE), x, in_rate // 10)
    expected = soxr.resample(x, in_rate, OUT_RATE, quality="HQ")
    assert len(y) == len(expected)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (44100, 16000), (48000, 16000)])
@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 9000), max_size=20))
def test_any_chunking_gives_the_same_output(in_rate: int, out_rate: int, cuts: list[int]) -> None:
    x = np.random.default_rng(3).uniform(-0.5, 0.5, 9000).astype(np.float32)
    reference = stream(Resampler(in_rate, out_rate), x, len(x))
    y = stream_split(Resampler(in_rate, out_rate), x, cuts)
    assert len(y) == len(reference)
    np.testing.assert_allclose(y, reference, rtol=0, atol=1e-6)


def test_stereo_channels_are_not_mixed() -> None:
    in_rate, n = 48000, 48000
    left, right = sine((440.0,), in_rate, n), sine((1000.0,), in_rate, n)
    resamplers = ChannelResamplers(2, in_rate, OUT_RATE)
    x = np.stack([left, right])
    chunk = in_rate // 10
    outs: list[list[NDArray[np.float32]]] = [[], []]
    for i in range(0, n, chunk):
        for ch, y in enumerate(resamplers.process(x[:, i : i + chunk])):
            outs[ch].append(y)
    for ch, y in enumerate(resamplers.flush()):
        outs[ch].append(y)
    out_left, out_right = (np.concatenate(o) for o in outs)
    ref_left = sine((440.0,), OUT_RATE, n // 3)
    ref_right = sine((1000.0,), OUT_RATE, n // 3)
    assert aligned_correlation(out_left, ref_left)[0] > 0.95
    assert aligned_correlation(out_right, ref_right)[0] > 0.95
    m = len(ref_left)
    assert abs(np.corrcoef(out_left[:m], ref_right)[0, 1]) < 0.3
    assert abs(np.corrcoef(out_right[:m], ref_left)[0, 1]) < 0.3


def test_channel_resamplers_match_single_ones() -> None:
    x = np.random.default_rng(5).uniform(-0.5, 0.5, (3, 4410)).astype(np.float32)
    group = ChannelResamplers(3, 44100, OUT_RATE)
    assert group.channels == 3
    # A transposed (non-contiguous) input is fine too.
    firsts = group.process(np.asfortranarray(x))
    lasts = group.flush()
    for ch in range(3):
        single = Resampler(44100, OUT_RATE)
        np.testing.assert_array_equal(firsts[ch], single.process(x[ch]))
        np.testing.assert_array_equal(lasts[ch], single.flush())


def test_equal_rates_pass_through() -> None:
    x = sine((440.0,), OUT_RATE, 1600)
    r = Resampler(OUT_RATE, OUT_RATE)
    np.testing.assert_array_equal(r.process(x), x)
    assert len(r.flush()) == 0
    assert (r.samples_in, r.samples_out) == (1600, 1600)


def test_flushed_resampler_refuses_input() -> None:
    r = Resampler(48000, OUT_RATE)
    r.process(np.zeros(4800, np.float32))
    r.flush()
    assert len(r.flush()) == 0
    with pytest.raises(RuntimeError, match="flushed"):
        r.process(np.zeros(10, np.float32))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quality"):
        Resampler(48000, OUT_RATE, quality="best")
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, OUT_RATE)
    with pytest.raises(ValueError, match="1-D"):
        Resampler(48000, OUT_RATE).process(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="shape"):
        ChannelResamplers(2, 48000, OUT_RATE).process(np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match="channels"):
        ChannelResamplers(0, 48000, OUT_RATE)
