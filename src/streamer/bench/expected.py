"""What a stream's audio must produce, computed offline with the server's own parts.

Simple route: final segments that tile the audio from 0 to its end at the model's rate.
Segmented route: the exact ``(start, end)`` spans of the final segments, found by running
the server's own decoder and segmented route (``streamer.route``) over the whole file,
with the Silero VAD called on this thread instead of the shared engine. The route's output
does not depend on how the audio is split into messages, and the VAD gives the same
probability for a row whatever batch it runs in, so the spans are exactly those the server
must send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamer.audio.decode import Decoder
from streamer.audio.formats import AudioFormat, Encoding
from streamer.audio.resample import ChannelResamplers
from streamer.route.segmented import Frames, SegmentedRoute
from streamer.route.work import Adopt, Infer, Work
from streamer.segmentation.segmenter import SPECULATIVE_PAD_MS, VadParams
from streamer.segmentation.vad import (
    CONTEXT_SAMPLES,
    STATE_SHAPE,
    VAD_SAMPLE_RATE,
    SileroVad,
)

Span = tuple[float, float]
"""A segment's ``(start_time, end_time)`` in seconds, rounded as the server rounds them."""


def seconds(samples: int, rate: int) -> float:
    """Sample index to the seconds the server reports (rounded to the microsecond)."""
    return round(samples / rate, 6)


def audio_format(fmt: dict[str, object]) -> AudioFormat:
    """The protocol's ``format`` object as an ``AudioFormat``."""
    return AudioFormat(
        channels=int(str(fmt["channels"])),
        sample_rate=int(str(fmt["sample_rate"])),
        bit_depth=int(str(fmt["bit_depth"])),
        is_float=bool(fmt["is_float"]),
        encoding=Encoding(str(fmt.get("encoding", "pcm"))),
    )


@dataclass(frozen=True, slots=True)
class Expected:
    """The final results one stream's audio must produce, per channel."""

    frames: int
    """Samples per channel at the audio's own rate."""
    sample_rate: int
    spans: tuple[tuple[Span, ...], ...] | None
    """Segmented route: each channel's final spans, in order; None on the simple route."""


def decode_channels(data: bytes, fmt: dict[str, object], rate: int) -> list[np.ndarray]:
    """Decode and resample a whole stream to ``rate``, one array per channel."""
    af = audio_format(fmt)
    block = Decoder(af).feed(data)
    resamplers = ChannelResamplers(af.channels, af.sample_rate, rate)
    heads = resamplers.process(block)
    tails = resamplers.flush()
    return [np.concatenate((h, t)).astype(np.float32) for h, t in zip(heads, tails, strict=True)]


class BlockingVad:
    """The Silero VAD for one stream's channels, run on the calling thread, a frame a call
    (each channel with its own recurrent state, as the engine keeps it)."""

    def __init__(self, vad: SileroVad, channels: int) -> None:
        self._vad = vad
        self._state = [
            np.zeros((STATE_SHAPE[0], 1, STATE_SHAPE[1]), dtype=np.float32) for _ in range(channels)
        ]
        self._context = [np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32) for _ in range(channels)]

    def probabilities(self, channel: int, frames: Frames) -> np.ndarray:
        probs = np.empty(len(frames), dtype=np.float32)
        for index, frame in enumerate(frames):
            prob, self._state[channel], self._context[channel] = self._vad.run(
                frame[None, :], self._state[channel], self._context[channel]
            )
            probs[index] = prob[0]
        return probs


def segment_spans(
    data: bytes, fmt: dict[str, object], vad: SileroVad, params: VadParams | None = None
) -> tuple[tuple[Span, ...], ...]:
    """Each channel's final spans: the whole stream through the segmented route, with a
    server's default stream settings (its finals decoded ahead at pauses, which sets where
    a segment closing in a pause ends)."""
    af = audio_format(fmt)
    route = SegmentedRoute(
        af.channels,
        af.sample_rate,
        VAD_SAMPLE_RATE,
        params or VadParams(),
        speculate=True,
        speculate_pad_ms=SPECULATIVE_PAD_MS,
    )
    blocking = BlockingVad(vad, af.channels)
    spans: list[list[Span]] = [[] for _ in range(af.channels)]

    ahead: dict[int, tuple[int, Span]] = {}  # speculative finals by key: channel, span

    def take(work: Sequence[Work]) -> None:
        for item in work:
            if isinstance(item, Infer) and item.speculative:
                ahead[item.key] = (item.channel, (item.start, item.end))
            elif isinstance(item, Infer) and item.final:
                spans[item.channel].append((item.start, item.end))
            elif isinstance(item, Adopt):  # the final is the speculative decode's span
                channel, span = ahead.pop(item.key)
                spans[channel].append(span)

    def segment(frames: list[Frames]) -> None:
        for channel, framed in enumerate(frames):
            if len(framed):
                take(route.segment(channel, framed, blocking.probabilities(channel, framed)))

    segment(route.push(Decoder(af).feed(data)))
    for channel, framed in enumerate(route.drain()):
        if len(framed):
            take(route.segment(channel, framed, blocking.probabilities(channel, framed)))
        take(route.end_channel(channel))
    return tuple(tuple(channel) for channel in spans)


class ExpectedResults:
    """Computes and caches the expected results of each distinct audio."""

    def __init__(self) -> None:
        self._vad: SileroVad | None = None
        self._cache: dict[tuple[str, bool], Expected] = {}

    def get(self, key: str, data: bytes, fmt: dict[str, object], segmented: bool) -> Expected:
        """``key`` names the audio (file and repeats); the result is computed once."""
        cached = self._cache.get((key, segmented))
        if cached is not None:
            return cached
        af = audio_format(fmt)
        frames = len(data) // af.frame_bytes
        spans = None
        if segmented:
            if self._vad is None:
                self._vad = SileroVad()
            spans = segment_spans(data, fmt, self._vad)
        expected = Expected(frames=frames, sample_rate=af.sample_rate, spans=spans)
        self._cache[(key, segmented)] = expected
        return expected
