"""The bundled Silero VAD model: where its ONNX file is, its checksum, and ``SileroVad``,
the bare model on one onnxruntime session (frames, recurrent state and context in,
probabilities and the next state and context out, for any number of rows at once).

``vad.VadEngine`` shares one of these between every stream of the process.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import time
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

__all__ = [
    "CONTEXT_SAMPLES",
    "FRAMES_PER_SECOND",
    "FRAME_SAMPLES",
    "SILERO_SHA256",
    "STATE_SHAPE",
    "VAD_SAMPLE_RATE",
    "Float32Array",
    "SileroVad",
    "sha256_of",
    "silero_model_path",
]

SILERO_SHA256: Final = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
"""SHA-256 of the bundled ``silero/silero_vad.onnx`` (see ``silero/README.md``)."""

VAD_SAMPLE_RATE: Final = 16000
"""The only rate the engine runs at; resample before framing."""
FRAME_SAMPLES: Final = 512
"""New samples per model call at 16 kHz (32 ms)."""
FRAMES_PER_SECOND: Final = VAD_SAMPLE_RATE / FRAME_SAMPLES
"""Frames in one second of audio (31.25)."""
CONTEXT_SAMPLES: Final = 64
"""Samples of the previous frame the model sees again in front of each frame."""
STATE_SHAPE: Final = (2, 128)
"""One stream's recurrent state; a batch holds ``(2, batch, 128)``."""

Float32Array = NDArray[np.float32]


def silero_model_path() -> Path:
    """The Silero VAD ONNX file that ships inside this package (MIT; ``silero/LICENSE``).

    Bundled so that installing streamer alone is enough to serve: the ``silero-vad``
    package would bring torch, which the service never uses.
    """
    resource = importlib.resources.files(__package__ or "streamer.segmentation")
    path = Path(str(resource.joinpath("silero", "silero_vad.onnx")))
    if not path.is_file():
        raise FileNotFoundError(f"the bundled Silero VAD model is missing: {path}")
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SileroVad:
    """The Silero VAD ONNX model on the CPU: one thread, no spinning.

    Synchronous and stateless between calls (the caller keeps every row's state and
    context), so rows of different streams can share a call. Not to be called from two
    threads at once; the engine gives it a thread of its own.
    """

    def __init__(self, path: Path | None = None) -> None:
        options = ort.SessionOptions()
        # One thread is faster per frame than onnxruntime's default pool and leaves the
        # other cores to the event loop; spinning would burn a core while idle.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path or silero_model_path()),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._sr = np.array(VAD_SAMPLE_RATE, dtype=np.int64)

    def run(
        self, frames: Float32Array, state: Float32Array, context: Float32Array
    ) -> tuple[Float32Array, Float32Array, Float32Array]:
        """Run ``B`` rows: frames ``(B, 512)``, state ``(2, B, 128)``, context ``(B, 64)``.

        Returns the speech probabilities ``(B,)``, the next state ``(2, B, 128)`` and the
        next context ``(B, 64)`` (the last 64 samples of each frame).
        """
        rows = frames.shape[0]
        if frames.shape != (rows, FRAME_SAMPLES):
            raise ValueError(f"frames must be (batch, {FRAME_SAMPLES}), got {frames.shape}")
        if state.shape != (STATE_SHAPE[0], rows, STATE_SHAPE[1]):
            raise ValueError(f"state must be (2, {rows}, 128), got {state.shape}")
        if context.shape != (rows, CONTEXT_SAMPLES):
            raise ValueError(f"context must be ({rows}, {CONTEXT_SAMPLES}), got {context.shape}")
        window = np.concatenate((context, frames), axis=1, dtype=np.float32)
        out, new_state = self._session.run(
            None,
            {"input": window, "state": np.asarray(state, dtype=np.float32), "sr": self._sr},
        )
        probs = np.asarray(out, dtype=np.float32).reshape(rows)
        return probs, np.asarray(new_state, dtype=np.float32), window[:, -CONTEXT_SAMPLES:].copy()

    def cost_per_frame(self, batch: int = 256, calls: int = 4) -> float:
        """CPU seconds per frame of ``batch``-row calls, measured now on this thread (the
        model runs on its caller's thread): a quick reading of this machine's speed, for
        a first estimate of what a stream costs before one has been measured. Noise in,
        not silence: the model's cost does not depend on the audio, and noise keeps its
        state moving as speech does. About ``calls + 1`` calls (40 ms at 256 rows on a
        2020s x86 core)."""
        if batch < 1 or calls < 1:
            raise ValueError("batch and calls must be at least 1")
        rng = np.random.default_rng(0)
        frames = (rng.standard_normal((batch, FRAME_SAMPLES)) * 0.1).astype(np.float32)
        state = np.zeros((STATE_SHAPE[0], batch, STATE_SHAPE[1]), dtype=np.float32)
        context = np.zeros((batch, CONTEXT_SAMPLES), dtype=np.float32)
        _, state, context = self.run(frames, state, context)  # the first call allocates
        began = time.thread_time()
        for _ in range(calls):
            _, state, context = self.run(frames, state, context)
        return (time.thread_time() - began) / (calls * batch)
