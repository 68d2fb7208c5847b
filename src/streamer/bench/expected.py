"""What a stream's audio must produce, computed offline with the server's own parts.

Simple route: final segments that tile the audio from 0 to its end at the model's rate.
Segmented route: the exact ``(start, end)`` spans of the final segments, found by running
the same decoder, resampler, Silero VAD and segmenter over the whole file. The resampler's
output and the segmenter's decisions do not depend on how the audio is split into
messages, and the VAD gives the same probability for a row whatever batch it runs in, so
the spans are exactly those the server must send.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.audio.decode import Decoder
from streamer.audio.formats import AudioFormat, Encoding
from streamer.audio.resample import ChannelResamplers
from streamer.segmentation.segmenter import Segment, Segmenter, VadParams
from streamer.segmentation.vad import (
    CONTEXT_SAMPLES,
    FRAME_SAMPLES,
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


def segment_spans(
    samples: np.ndarray, vad: SileroVad, params: VadParams | None = None
) -> tuple[Span, ...]:
    """The final spans the segmenter gives for one channel at 16 kHz."""
    segmenter = Segmenter(params or VadParams(), interim=False, sample_rate=VAD_SAMPLE_RATE)
    whole = len(samples) // FRAME_SAMPLES
    frames = samples[: whole * FRAME_SAMPLES].reshape(whole, FRAME_SAMPLES)
    state = np.zeros((STATE_SHAPE[0], 1, STATE_SHAPE[1]), dtype=np.float32)
    context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)
    events = []
    for frame in frames:
        probs, state, context = vad.run(frame[None, :], state, context)
        events.extend(segmenter.push(frame, float(probs[0])))
    events.extend(segmenter.flush(samples[whole * FRAME_SAMPLES :]))
    return tuple(
        (seconds(e.start, VAD_SAMPLE_RATE), seconds(e.end, VAD_SAMPLE_RATE))
        for e in events
        if isinstance(e, Segment) and e.is_final
    )


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
            channels = decode_channels(data, fmt, VAD_SAMPLE_RATE)
            spans = tuple(segment_spans(c, self._vad) for c in channels)
        expected = Expected(frames=frames, sample_rate=af.sample_rate, spans=spans)
        self._cache[(key, segmented)] = expected
        return expected
