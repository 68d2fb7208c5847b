"""The numpy Whisper features against reference implementations, on real speech."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from streamer.turn.features import (
    N_FRAMES,
    N_MELS,
    WINDOW_SAMPLES,
    last_window,
    log_mel,
    turn_features,
)

ROOT = Path(__file__).parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
PIPECAT_PYTHON = ROOT / ".venv-clients" / "pipecat" / "bin" / "python"


@functools.cache
def speech(name: str) -> NDArray[np.float32]:
    audio, rate = sf.read(FIXTURES / "audio" / name, dtype="float32")
    assert rate == 16000
    return np.asarray(audio, dtype=np.float32)


CLIPS = {
    "jfk": lambda: speech("jfk.wav"),
    "harvard_3s": lambda: speech("harvard_16k.wav")[: 3 * 16000],
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_features_match_transformers_on_real_speech(name: str) -> None:
    # Written by tests/fixtures/turn/make_features_reference.py with transformers'
    # WhisperFeatureExtractor (every tenth frame): one clip longer than the window, one
    # shorter, so both the cut and the front padding are held to the reference.
    reference = np.load(FIXTURES / "turn" / "features_reference.npz")
    ours = turn_features(CLIPS[name]())
    assert ours.shape == (N_MELS, N_FRAMES)
    assert ours.dtype == np.float32
    expected = reference[name]
    assert expected.shape == (N_MELS, N_FRAMES // 10)
    np.testing.assert_allclose(ours[:, ::10], expected, atol=1e-5, rtol=0)


@pytest.mark.skipif(
    not PIPECAT_PYTHON.exists(),
    reason="the pipecat client environment (.venv-clients/pipecat, `make clients`) is absent",
)
def test_features_match_pipecat_live(tmp_path: Path) -> None:
    # Pipecat's own numpy port of the extractor, run in its environment, on a clip cut
    # and padded as its Smart Turn analyzer does.
    audio = speech("harvard_16k.wav")[: int(6.3 * 16000)]
    np.save(tmp_path / "audio.npy", audio)
    script = (
        "import sys, numpy as np\n"
        "from pipecat.audio.turn.smart_turn._whisper_features import "
        "compute_whisper_log_mel_features as f\n"
        "a = np.load(sys.argv[1]); a = np.pad(a, (128000 - len(a), 0))\n"
        "np.save(sys.argv[2], f(a, do_normalize=True))\n"
    )
    subprocess.run(
        [str(PIPECAT_PYTHON), "-c", script, str(tmp_path / "audio.npy"), str(tmp_path / "ref.npy")],
        check=True,
        timeout=120,
    )
    np.testing.assert_allclose(turn_features(audio), np.load(tmp_path / "ref.npy"), atol=1e-5)


def test_last_window_keeps_the_end_and_pads_the_front() -> None:
    audio = np.arange(1, WINDOW_SAMPLES + 101, dtype=np.float32)
    cut = last_window(audio)
    assert cut.shape == (WINDOW_SAMPLES,)
    assert cut[0] == 101 and cut[-1] == WINDOW_SAMPLES + 100
    short = last_window(np.ones(10, dtype=np.float32))
    assert short[: WINDOW_SAMPLES - 10].sum() == 0 and short[-10:].sum() == 10
    assert last_window(np.empty(0, dtype=np.float32)).sum() == 0


def test_log_mel_refuses_a_window_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="128000"):
        log_mel(np.zeros(1000, dtype=np.float32))


def test_silence_gives_finite_features() -> None:
    # All-zero audio: the variance is zero, the floor keeps the log finite.
    features = turn_features(np.zeros(16000, dtype=np.float32))
    assert np.isfinite(features).all()
