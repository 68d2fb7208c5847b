"""Word times: asked per stream, passed only to models that give them, moved into stream time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from model_factories import Loudness
from numpy.typing import NDArray

from streamer.audio.formats import AudioFormat
from streamer.events import Event, SegmentResult
from streamer.inference.model import Output, WordTimedModel, shift_words
from streamer.inference.pool import ThreadPool, call_model
from streamer.inference.scheduler import Scheduler
from streamer.pipeline import Route, StreamOptions, StreamPipeline


class Timed:
    """Says "hi" over each input's first 0.1-0.2 s, with times when asked."""

    name = "timed"
    sample_rate = 16000
    max_batch_size = 4
    word_times = True

    def __init__(self) -> None:
        self.asked: list[list[bool] | None] = []

    def infer(self, audio: NDArray[np.float32]) -> Output:
        return {"text": "hi"}

    def infer_batch(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        self.asked.append(None if words is None else list(words))
        word = {"word": "hi", "start": 0.1, "end": 0.2, "confidence": 0.9}
        return [
            {"text": "hi", "words": [dict(word)]} if words and words[i] else {"text": "hi"}
            for i in range(len(batch))
        ]


def silence(n: int) -> NDArray[np.float32]:
    return np.zeros(n, dtype=np.float32)


def test_a_model_that_gives_word_times_says_so() -> None:
    assert isinstance(Timed(), WordTimedModel)
    assert not isinstance(Loudness(), WordTimedModel)


def test_only_a_model_that_gives_word_times_is_asked_for_them() -> None:
    timed = Timed()
    assert call_model(timed, [silence(10), silence(10)], [False, True]) == [
        {"text": "hi"},
        {"text": "hi", "words": [{"word": "hi", "start": 0.1, "end": 0.2, "confidence": 0.9}]},
    ]
    assert call_model(timed, [silence(10)], [False]) == [{"text": "hi"}]
    assert timed.asked == [[False, True], None]  # nobody asked: the plain call
    # A model of one's own without the flag keeps its one-argument infer_batch.
    assert call_model(Loudness(), [silence(8), silence(8)], [True, True])[0]["samples"] == 8


def test_shifting_moves_every_word_and_nothing_else() -> None:
    out = {"text": "a b", "words": [{"word": "a", "start": 0.1, "end": 0.25, "confidence": 1}]}
    assert shift_words(out, 2.0) == {
        "text": "a b",
        "words": [{"word": "a", "start": 2.1, "end": 2.25, "confidence": 1}],
    }
    assert out["words"][0]["start"] == 0.1  # the model's own output is left alone
    assert shift_words({"count": 3}, 2.0) == {"count": 3}


async def test_a_streams_finals_carry_words_in_stream_time() -> None:
    model = Timed()
    scheduler = Scheduler(ThreadPool(model, 1), sample_rate=16000, max_batch=4)
    scheduler.start()
    events: list[Event] = []
    fmt = AudioFormat(channels=1, sample_rate=16000, bit_depth=16, is_float=False)
    options = StreamOptions(Route.SIMPLE, fmt, 16000, chunk_seconds=1.0, words=True)
    pipeline = StreamPipeline("s", options, backend=scheduler, emit=events.append)
    pipeline.start()
    await pipeline.feed(bytes(2 * 16000 * 3))  # three chunks of a second
    await pipeline.finish()
    await scheduler.close()
    segments = [e for e in events if isinstance(e, SegmentResult)]
    starts = [[w["start"] for w in s.output["words"]] for s in segments]
    assert [s.start for s in segments] == [0.0, 1.0, 2.0]
    assert starts == [[0.1], [1.1], [2.1]]
