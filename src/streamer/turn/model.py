"""Smart Turn v3.2, the end-of-turn model that ships in the package, on onnxruntime.

``SmartTurn`` is the bare model: log-mel windows in (``features.turn_features``), one
probability per window out, that the speaker has finished their turn. Synchronous; the
turn engine gives it a thread of its own.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from streamer.errors import StreamerError
from streamer.turn.features import N_FRAMES, N_MELS, turn_features

__all__ = [
    "SMART_TURN_SHA256",
    "ModelFileMismatch",
    "SmartTurn",
    "smart_turn_model_path",
]

SMART_TURN_SHA256: Final = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
"""SHA-256 of the bundled ``smart_turn/smart-turn-v3.2-cpu.onnx`` (see its ``README.md``)."""

Float32Array = NDArray[np.float32]


class ModelFileMismatch(StreamerError):
    """A model file's bytes are not the ones this code was written and tested against."""


def smart_turn_model_path() -> Path:
    """The Smart Turn v3.2 ONNX file inside this package (BSD-2; ``smart_turn/LICENSE``)."""
    resource = importlib.resources.files(__package__ or "streamer.turn")
    path = Path(str(resource.joinpath("smart_turn", "smart-turn-v3.2-cpu.onnx")))
    if not path.is_file():
        raise FileNotFoundError(f"the bundled end-of-turn model is missing: {path}")
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SmartTurn:
    """The end-of-turn model on the CPU, ``threads`` intra-op threads, no spinning.

    Stateless between calls, so windows of different streams can share one. The bundled
    file is checked against ``SMART_TURN_SHA256`` before it is loaded: a truncated or
    swapped file fails here, not as odd probabilities later. Not to be called from two
    threads at once.
    """

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        model = path or smart_turn_model_path()
        if path is None:
            digest = sha256_of(model)
            if digest != SMART_TURN_SHA256:
                raise ModelFileMismatch(
                    f"{model} has SHA-256 {digest}, expected {SMART_TURN_SHA256}; reinstall"
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning would burn the cores between pauses; the model runs seldom.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self._session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run(self, features: Float32Array) -> Float32Array:
        """End-of-turn probabilities ``(B,)`` for log-mel windows ``(B, 80, 800)``."""
        if features.ndim != 3 or features.shape[1:] != (N_MELS, N_FRAMES):
            raise ValueError(
                f"features must be (batch, {N_MELS}, {N_FRAMES}), got {features.shape}"
            )
        (out,) = self._session.run(
            None, {"input_features": np.ascontiguousarray(features, dtype=np.float32)}
        )
        return np.asarray(out, dtype=np.float32).reshape(len(features))

    def score(self, audio: NDArray[np.floating]) -> float:
        """The probability that 16 kHz ``audio``, ending now, ends a turn."""
        return float(self.run(turn_features(audio)[None])[0])
