"""Framer: any chunking gives the same frames at the same offsets, and no sample is lost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from streamer.audio.framing import Framer


def signal(n: int) -> NDArray[np.float32]:
    # Distinct values, so a frame out of place or a lost sample cannot go unnoticed.
    return np.arange(n, dtype=np.float32)


def run(
    size: int, x: NDArray[np.float32], cuts: list[int]
) -> tuple[list[tuple[int, NDArray[np.float32]]], NDArray[np.float32], Framer]:
    """Push ``x`` split at ``cuts``; return (start offset, frame) pairs, the tail, the framer."""
    framer = Framer(size)
    frames: list[tuple[int, NDArray[np.float32]]] = []
    points = [0, *sorted(cuts), len(x)]
    pushed = 0
    for a, b in itertools.pairwise(points):
        before = framer.offset
        out = framer.push(x[a:b])
        pushed += b - a
        frames.extend((before + i * size, frame) for i, frame in enumerate(out))
        assert framer.offset == len(frames) * size
        assert framer.pending == pushed - framer.offset
        assert 0 <= framer.pending < size
    tail = framer.take_tail()
    return frames, tail, framer


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 700),
    n=st.integers(0, 5000),
    data=st.data(),
)
def test_any_split_gives_the_same_frames(size: int, n: int, data: st.DataObject) -> None:
    x = signal(n)
    cuts = data.draw(st.lists(st.integers(0, n), max_size=30), label="cuts")
    frames, tail, framer = run(size, x, cuts)
    whole_frames, whole_tail, _ = run(size, x, [])
    assert [o for o, _ in frames] == [o for o, _ in whole_frames]
    for (offset, frame), (_, expected) in zip(frames, whole_frames, strict=True):
        assert frame.shape == (size,)
        assert frame.dtype == np.float32
        np.testing.assert_array_equal(frame, expected)
        np.testing.assert_array_equal(frame, x[offset : offset + size])
    np.testing.assert_array_equal(tail, whole_tail)
    # Conservation: frames and tail together are exactly the input, in order.
    np.testing.assert_array_equal(np.concatenate([*(f for _, f in frames), tail]), x)
    assert framer.offset == n
    assert framer.pending == 0


def test_take_tail_returns_the_remainder_and_resets() -> None:
    framer = Framer(4)
    frames = framer.push(signal(10))
    assert len(frames) == 2
    assert framer.pending == 2
    np.testing.assert_array_equal(framer.take_tail(), [8.0, 9.0])
    assert framer.offset == 10
    assert framer.pending == 0
    assert len(framer.take_tail()) == 0
    # Frames after a tail count from where the tail ended.
    framer.push(np.ones(3, np.float32))
    assert framer.offset == 10
    assert len(framer.push(np.ones(1, np.float32))) == 1
    assert framer.offset == 14


def test_frames_are_copies() -> None:
    framer = Framer(4)
    x = signal(9)
    frames = framer.push(x)
    x[:] = -1
    frames += framer.push(np.zeros(3, np.float32))
    np.testing.assert_array_equal(np.concatenate(frames), [*range(8), 8, 0, 0, 0])


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Framer(0)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 700),
    n=st.integers(0, 5000),
    data=st.data(),
)
def test_push_block_gives_pushs_frames_as_one_array(size: int, n: int, data: st.DataObject) -> None:
    x = signal(n)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=30), label="cuts"))
    one, blocks = Framer(size), Framer(size)
    for a, b in itertools.pairwise([0, *cuts, n]):
        frames = one.push(x[a:b])
        block = blocks.push_block(x[a:b])
        assert block.shape == (len(frames), size) and block.dtype == np.float32
        np.testing.assert_array_equal(block, np.array(frames).reshape(-1, size))
        assert (blocks.offset, blocks.pending) == (one.offset, one.pending)
    np.testing.assert_array_equal(blocks.take_tail(), one.take_tail())
    block = blocks.push_block(x)
    assert not np.shares_memory(block, x)  # a copy: the caller's buffer may be reused
