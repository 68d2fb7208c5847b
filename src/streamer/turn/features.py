"""Whisper log-mel features for the end-of-turn model, with numpy alone.

The settings are those of Whisper's feature extractor at an 8-second chunk (16 kHz, a
400-sample periodic Hann window, a 160-sample hop, 80 Slaney-scaled and Slaney-normalised
mel bands from 0 to 8 kHz, ``log10`` floored at 1e-10, clamped to 8 below the maximum and
scaled by ``(x + 4) / 4``). The model also expects, as upstream's inference code does, the
last 8 seconds of audio (zero-padded at the front when shorter) normalised to zero mean
and unit variance. A test holds these features to a reference implementation on real
speech. Bringing torch or transformers in for one spectrogram would weigh more than the
model itself.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "N_FRAMES",
    "N_MELS",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "last_window",
    "log_mel",
    "turn_features",
]

SAMPLE_RATE: Final = 16000
"""The model's only input rate."""
WINDOW_SAMPLES: Final = 8 * SAMPLE_RATE
"""The model sees the last 8 seconds."""
N_FFT: Final = 400
HOP: Final = 160
N_MELS: Final = 80
N_FRAMES: Final = WINDOW_SAMPLES // HOP
"""800 frames of 10 ms."""
MEL_FLOOR: Final = 1e-10
VARIANCE_EPS: Final = 1e-7

Float32Array = NDArray[np.float32]
Float64Array = NDArray[np.float64]


def _hz_to_mel(hz: Float64Array) -> Float64Array:
    """Slaney's mel scale: linear to 1 kHz (3 mels per 200 Hz), logarithmic above."""
    linear = hz * 3.0 / 200.0
    above = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, above, linear)


def _mel_to_hz(mel: Float64Array) -> Float64Array:
    linear = mel * 200.0 / 3.0
    above = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, above, linear)


def _mel_filters() -> Float64Array:
    """Triangular filters ``(N_MELS, N_FFT // 2 + 1)``, each scaled to unit area (Slaney)."""
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    )
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return np.asarray(triangles * (2.0 / (upper - lower)), dtype=np.float64)


def _bands(filters: Float64Array) -> tuple[tuple[int, int, Float64Array], ...]:
    """Each filter's span of non-zero bins and its weights there.

    A filter covers a few of the 201 bins, so the mel step sums over those alone, in
    numpy's own loops. A BLAS matrix product would take less wall time but, with
    OpenBLAS's worker threads, about as much CPU again on another core (measured here: 36
    ms of the engine's thread per call and as much again besides), which the engine's own
    CPU count (``TurnEngine.cpu_seconds``, charged by admission) would not see.
    """
    out = []
    for row in filters:
        nonzero = np.flatnonzero(row)
        low, high = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        out.append((low, high, np.array(row[low:high])))
    return tuple(out)


_FILTERS: Final = _mel_filters()
_BANDS: Final = _bands(_FILTERS)
# Periodic Hann (the DFT-even window Whisper was trained with), not numpy's symmetric one.
_WINDOW: Final = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)


def last_window(audio: NDArray[np.floating]) -> Float32Array:
    """The last ``WINDOW_SAMPLES`` of 16 kHz mono audio, zero-padded at the front."""
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(samples) >= WINDOW_SAMPLES:
        return np.array(samples[len(samples) - WINDOW_SAMPLES :], dtype=np.float32)
    out = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    if len(samples):
        out[WINDOW_SAMPLES - len(samples) :] = samples
    return out


def log_mel(window: Float32Array) -> Float32Array:
    """Whisper's log-mel spectrogram ``(N_MELS, N_FRAMES)`` of exactly ``WINDOW_SAMPLES``.

    Centred frames over a reflect-padded signal (801 of them; the last is dropped, as
    Whisper does), the power spectrum in float64, the mel filters, then the log and its
    dynamic-range clamp.
    """
    if window.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"the window must be ({WINDOW_SAMPLES},), got {window.shape}")
    padded = np.pad(window.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (801, 201)
    spectrum = power[:-1]  # (800, 201)
    mel = np.empty((N_MELS, N_FRAMES), dtype=np.float64)
    for band, (low, high, weights) in enumerate(_BANDS):
        np.sum(spectrum[:, low:high] * weights, axis=1, out=mel[band])
    logs: Float64Array = np.log10(np.maximum(MEL_FLOOR, mel))
    logs = np.maximum(logs, logs.max() - 8.0)
    return np.asarray((logs + 4.0) / 4.0, dtype=np.float32)


def turn_features(audio: NDArray[np.floating]) -> Float32Array:
    """The model's input ``(N_MELS, N_FRAMES)`` for 16 kHz audio ending now.

    The last 8 seconds (zero-padded in front), normalised to zero mean and unit variance
    over the whole window (padding included, as upstream does), then ``log_mel``.
    """
    window = last_window(audio)
    normal: Float32Array = (window - window.mean()) / np.sqrt(window.var() + VARIANCE_EPS)
    return log_mel(normal.astype(np.float32))
