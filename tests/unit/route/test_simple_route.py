"""The simple route without a socket or a loop: chunks that tile the audio, whatever the
split, and what ``finalize`` and the end cut."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamer.events import Finalized
from streamer.route.simple import SimpleRoute
from streamer.route.work import Infer, Post, Work

RATE = 16000


def noise(n: int, channels: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, (channels, n)).astype(np.float32)


def run(block: np.ndarray, cuts: list[int], input_rate: int = RATE) -> list[Work]:
    route = SimpleRoute(block.shape[0], input_rate, RATE, 0.1)
    work: list[Work] = []
    for a, b in itertools.pairwise([0, *cuts, block.shape[1]]):
        work += route.push(block[:, a:b])
    return work + route.end()


def spans(work: list[Work]) -> list[tuple[int, float, float, bytes]]:
    """Each channel's chunks in order (channels take turns message by message)."""
    chunks = [(w.channel, w.start, w.end, w.audio.tobytes()) for w in work if isinstance(w, Infer)]
    return sorted(chunks, key=lambda chunk: chunk[0])


@given(st.lists(st.integers(0, 5000), max_size=10))
def test_any_split_gives_the_same_chunks_tiling_each_channel(cuts: list[int]) -> None:
    block = noise(5000)
    work = run(block, sorted(cuts))
    assert spans(work) == spans(run(block, []))
    for channel in (0, 1):
        mine = [w for w in work if isinstance(w, Infer) and w.channel == channel]
        assert all(w.final and not w.forced for w in mine)
        assert [w.start for w in mine] == [0.0, *(w.end for w in mine[:-1])]
        assert mine[-1].end == round(5000 / RATE, 6)
        assert np.array_equal(np.concatenate([w.audio for w in mine]), block[channel])


def test_another_input_rate_is_resampled_to_the_models_and_flushed_at_the_end() -> None:
    work = run(noise(4410, 1), [1000, 3000], input_rate=44100)
    assert [w.end for w in work if isinstance(w, Infer)] == [0.1]
    assert sum(len(w.audio) for w in work if isinstance(w, Infer)) == 1600


def test_finalize_cuts_each_channels_partial_chunk_and_says_so() -> None:
    route = SimpleRoute(2, RATE, RATE, 0.1, mark_finalize=True)
    assert len(route.push(noise(2000))) == 2  # one whole chunk a channel
    work = route.finalize()
    assert [(w.channel, w.start, w.end, w.forced) for w in work if isinstance(w, Infer)] == [
        (0, 0.1, 0.125, True),
        (1, 0.1, 0.125, True),
    ]
    assert [w.event for w in work if isinstance(w, Post)] == [
        Finalized(0, 0.125, 1),
        Finalized(1, 0.125, 1),
    ]
    assert route.end() == []  # nothing left
