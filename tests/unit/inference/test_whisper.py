"""Whisper tiny.en (the whisper extra) transcribes the real speech fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transcripts import SAID, word_error_rate

from streamer.app import build_model
from streamer.bench.expected import decode_channels
from streamer.cli.client import load_audio
from streamer.config import Settings
from streamer.inference.model import Model, UnsupportedModel
from streamer.inference.whisper import WhisperParams, WhisperRecognizer, has_words, is_no_speech

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"


def speech(name: str) -> np.ndarray:
    """A fixture as the server hands it to the model: mono float32 at 16 kHz."""
    audio = load_audio(AUDIO / name)
    return decode_channels(audio.data, dict(audio.format), 16000)[0]


@pytest.fixture(scope="module")
def whisper() -> WhisperRecognizer:
    return WhisperRecognizer()


@pytest.mark.parametrize(
    ("name", "ceiling"),
    [
        ("jfk.wav", 0.0),
        ("harvard_16k.wav", 0.1),
        ("front_center_48k.wav", 0.0),
        ("cross_8k.wav", 0.0),  # mu-law telephony, through the resampler
        ("big_dog_8k.wav", 0.4),  # tiny.en mishears "loved to chew" at 8 kHz
    ],
)
def test_it_transcribes_real_speech(whisper: WhisperRecognizer, name: str, ceiling: float) -> None:
    text = whisper.infer(speech(name))["text"]
    assert word_error_rate(SAID[name], text) <= ceiling, text


def test_noise_without_speech_gives_no_words(whisper: WhisperRecognizer) -> None:
    noise = speech("modem_noise_8k.wav")[: 10 * 16000]
    assert whisper.infer(noise) == {"text": ""}


@pytest.mark.parametrize(
    ("no_speech", "logprob", "ratio", "dropped"),
    [
        (0.86, -0.03, 29.8, True),  # tiny.en's confident ". . . ." loop over modem noise
        (0.86, -1.6, 1.2, True),  # improbable text over likely silence
        (0.86, -0.3, 1.5, False),  # likely silence, but fluent text: kept
        (0.1, -2.0, 30.0, False),  # speech, however garbled: kept
    ],
)
def test_a_decode_is_no_speech_only_when_likely_silence_and_unlikely_or_looping(
    no_speech: float, logprob: float, ratio: float, dropped: bool
) -> None:
    assert is_no_speech(WhisperParams(), no_speech, logprob, ratio) is dropped


def test_punctuation_alone_is_no_transcript() -> None:
    assert not has_words(". . . ?") and has_words("It's 4.") and has_words("Ja.")


def test_empty_audio_gives_empty_text(whisper: WhisperRecognizer) -> None:
    assert whisper.infer(np.zeros(0, dtype=np.float32)) == {"text": ""}


def test_the_batch_form_gives_one_output_per_input_in_order(whisper: WhisperRecognizer) -> None:
    names = ["cross_8k.wav", "front_center_48k.wav"]
    outputs = whisper.infer_batch([speech(name) for name in names])
    texts = [output["text"] for output in outputs if isinstance(output, dict)]
    assert [word_error_rate(SAID[n], t) for n, t in zip(names, texts, strict=True)] == [0, 0]


def test_it_is_a_model_the_settings_can_name() -> None:
    model = build_model(Settings(inference={"model": "whisper"}))
    assert isinstance(model, WhisperRecognizer) and isinstance(model, Model)
    assert (model.name, model.sample_rate, model.max_batch_size) == ("whisper-tiny.en", 16000, 1)


def test_a_directory_without_a_model_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=r"model\.bin is missing"):
        WhisperRecognizer(WhisperParams(model_path=tmp_path))
