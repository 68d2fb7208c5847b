"""The bundled end-of-turn model: its file, its checksum, and its answers on real speech."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.typing import NDArray

from streamer.turn import model as model_module
from streamer.turn.model import (
    SMART_TURN_SHA256,
    ModelFileMismatch,
    SmartTurn,
    sha256_of,
    smart_turn_model_path,
)

AUDIO = Path(__file__).parents[2] / "fixtures" / "audio"


@functools.cache
def speech(name: str) -> NDArray[np.float32]:
    audio, rate = sf.read(AUDIO / name, dtype="float32")
    assert rate == 16000
    return np.asarray(audio, dtype=np.float32)


@functools.cache
def loaded() -> SmartTurn:
    return SmartTurn()


def test_the_bundled_file_is_the_one_documented() -> None:
    path = smart_turn_model_path()
    assert path.stat().st_size == 8_679_182
    assert sha256_of(path) == SMART_TURN_SHA256
    assert SMART_TURN_SHA256 in (path.parent / "README.md").read_text()
    assert "BSD 2-Clause" in (path.parent / "LICENSE").read_text()


def test_a_corrupt_bundled_file_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt = tmp_path / "smart-turn-v3.2-cpu.onnx"
    shutil.copyfile(smart_turn_model_path(), corrupt)
    with corrupt.open("r+b") as f:
        f.seek(4096)
        f.write(b"\0" * 16)
    monkeypatch.setattr(model_module, "smart_turn_model_path", lambda: corrupt)
    with pytest.raises(ModelFileMismatch, match="SHA-256"):
        SmartTurn()


def test_complete_and_cut_sentences_on_real_speech() -> None:
    # "The birch canoe slid on the smooth planks." ends near 2.4 s; at 1.5 s it has stopped
    # in the middle ("The birch canoe slid on ...").
    harvard = speech("harvard_16k.wav")
    model = loaded()
    complete = model.score(harvard[: int(2.9 * 16000)])
    cut = model.score(harvard[: int(1.5 * 16000)])
    assert complete > 0.7, complete
    assert cut < 0.5, cut


def test_batched_rows_equal_rows_alone() -> None:
    from streamer.turn.features import turn_features

    harvard = speech("harvard_16k.wav")
    windows = np.stack([turn_features(harvard[: n * 16000]) for n in (1, 2, 3)])
    model = loaded()
    together = model.run(windows)
    alone = np.concatenate([model.run(w[None]) for w in windows])
    assert together.shape == (3,)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert ((together >= 0) & (together <= 1)).all()


def test_bad_shapes_and_threads_are_refused() -> None:
    with pytest.raises(ValueError, match="threads"):
        SmartTurn(threads=0)
    with pytest.raises(ValueError, match="80, 800"):
        loaded().run(np.zeros((1, 80, 799), dtype=np.float32))


def test_scoring_needs_neither_torch_nor_transformers() -> None:
    # `pip install streamer` alone must serve turn-taking: a fresh interpreter scores a
    # window and has loaded neither.
    script = (
        "import sys, numpy as np\n"
        "from streamer.turn.engine import TurnEngine\n"
        "with TurnEngine() as engine:\n"
        "    answer = engine.submit(engine.open_stream(), np.zeros(16000, np.float32)).result(60)\n"
        "assert answer is not None and 0 <= answer.probability <= 1\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
