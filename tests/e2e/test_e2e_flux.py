"""``/v2/listen`` (Deepgram Flux) driven by the real clients, unchanged but for their base
URL: the official Python SDK's ``listen.v2.connect``, Pipecat's ``DeepgramFluxSTTService``
in a pipeline, and LiveKit's ``deepgram.STTv2``, each from its own environment as a child
process against a real ``streamer serve`` with Whisper; bad queries with a plain socket.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, start_server
from test_e2e_deepgram import (
    AUDIO,
    CLIENTS,
    _status,
    deepgram_script,
    python_of,
    raw,
    run_client,
)
from transcripts import SAID, word_error_rate

pytestmark = pytest.mark.e2e

KEY = "flux-test-key-51c2"
FLUX = {"model": "flux-general-en", "encoding": "linear16", "sample_rate": 16000}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shipped Whisper model, with an API key."""
    running = start_server(
        tmp_path_factory.mktemp("flux-whisper"),
        env={
            "STREAMER_INFERENCE__MODEL": "whisper",
            "STREAMER_AUTH__API_KEYS": json.dumps([KEY]),
        },
    )
    yield running
    running.stop()


def paused_mid_phrase(path: Path, at: float = 5.70, pause: float = 2.5) -> Path:
    """jfk with a pause of the line's noise floor inserted at the quietest point near
    ``at`` (after "ask not what", mid-phrase): the end-of-turn model scores that pause
    about 0.4, an early end at an eager threshold of 0.3 that the rest of the phrase takes
    back. The pause is long enough for the turn's decode and score to come in first."""
    audio, rate = sf.read(AUDIO / "jfk.wav", dtype="float32")
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160).astype(np.float64)
    rms = np.sqrt((frames**2).mean(axis=1) + 1e-12)
    floor = max(float(np.percentile(rms, 2)), 1e-4)
    low, high = int((at - 0.12) * 100), int((at + 0.12) * 100) + 1
    cut = (low + int(np.argmin(rms[low:high]))) * 160 + 80
    noise = np.random.default_rng(0).normal(0, floor, int(pause * rate)).astype(np.float32)
    sf.write(path, np.concatenate([audio[:cut], noise, audio[cut:]]), rate, "PCM_16", format="RAW")
    return path


@pytest.fixture(scope="module")
def raws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("flux-audio")
    return {
        "jfk": raw(tmp, "jfk.wav"),
        "harvard": raw(tmp, "harvard_16k.wav"),
        "jfk_paused": paused_mid_phrase(tmp / "jfk_paused.raw"),
    }


def sdk(server: ServerProcess, audio: Path, query: dict[str, Any], *extra: str) -> dict[str, Any]:
    """The official Python SDK's ``listen.v2.connect(**query)`` streaming ``audio``."""
    return deepgram_script("deepgram_flux_python.py", server, KEY, audio, query, *extra)


def turn_infos(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in result["messages"] if m["type"] == "TurnInfo"]


def check_flux_rules(messages: list[dict[str, Any]]) -> None:
    """Connected first; sequence ids strictly increasing; every turn opens with
    StartOfTurn and ends with EndOfTurn (its trigger), TurnResumed only after
    EagerEndOfTurn, an EndOfTurn after an EagerEndOfTurn with its transcript, and
    turn_index one more after each EndOfTurn."""
    assert messages[0]["type"] == "Connected"
    sequence = [m["sequence_id"] for m in messages]
    assert all(a < b for a, b in itertools.pairwise(sequence)), sequence
    index, open_, eager = 0, False, None
    for m in (m for m in messages if m["type"] == "TurnInfo"):
        assert m["turn_index"] == index, m
        event = m["event"]
        assert (event == "StartOfTurn") is not open_, m
        open_ = True
        if event == "EagerEndOfTurn":
            eager = m["transcript"]
        elif event == "TurnResumed":
            assert eager is not None, m
            eager = None
        elif event == "EndOfTurn":
            assert m["trigger"] in ("model", "timeout", "manual"), m
            assert eager is None or m["transcript"] == eager, m
            open_, eager, index = False, None, index + 1
    assert not open_, "a turn was left open"


def test_python_sdk_real_speech_gives_turns_with_the_recordings_text_and_words(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    query = {**FLUX, "eager_eot_threshold": 0.5, "keyterm": ["birch", "canoe"], "tag": "e2e"}
    result = sdk(whisper, raws["harvard"], query, "--pace", "0.01")
    assert result["close_code"] == 1000
    messages = result["messages"]
    assert [m["model_class"] for m in messages][:1] == ["ListenV2Connected"]
    assert {m["model_class"] for m in turn_infos(result)} == {"ListenV2TurnInfo"}
    check_flux_rules(messages)
    ends = [m for m in turn_infos(result) if m["event"] == "EndOfTurn"]
    assert ends, [m["event"] for m in turn_infos(result)]
    said = " ".join(m["transcript"] for m in ends)
    assert word_error_rate(SAID["harvard_16k.wav"], said) <= 0.25, said
    for end in ends:
        assert end["words"] and all(w["word"] and 0 <= w["confidence"] <= 1 for w in end["words"])
        assert " ".join(w["word"] for w in end["words"]) == end["transcript"]
        assert end["audio_window_start"] < end["audio_window_end"]
        assert 0 <= end["end_of_turn_confidence"] <= 1


def test_python_sdk_configure_mid_stream_and_force_end_turn(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    thresholds = {"eot_threshold": 0.9, "eager_eot_threshold": 0.6, "eot_timeout_ms": 3000}
    result = sdk(
        whisper,
        raws["jfk"],
        FLUX,
        "--configure-at",
        "16000",
        "--configure",
        json.dumps(thresholds),
        "--force-end-at",
        str(32000 * 6),  # inside "ask not what your country": a turn is open
        "--pace",
        "0.02",
    )
    assert result["close_code"] == 1000
    messages = result["messages"]
    check_flux_rules(messages)
    [success] = [m for m in messages if m["type"] == "ConfigureSuccess"]
    assert success["model_class"] == "ListenV2ConfigureSuccess"
    assert success["thresholds"] == thresholds
    manual = [m for m in turn_infos(result) if m.get("trigger") == "manual"]
    assert manual and manual[0]["transcript"], [m["event"] for m in turn_infos(result)]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("encoding=linear16&sample_rate=16000", "model"),
        ("model=nova-3&encoding=linear16&sample_rate=16000", "model"),
        ("model=flux-general-en&encoding=opus&sample_rate=16000", "encoding"),
        ("model=flux-general-en&encoding=linear16", "sample_rate"),
        (
            "model=flux-general-en&encoding=linear16&sample_rate=16000&eot_threshold=1.2",
            "eot_threshold",
        ),
        (
            "model=flux-general-en&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.9",
            "eager_eot_threshold",
        ),
        (
            "model=flux-general-en&encoding=linear16&sample_rate=16000&eot_timeout_ms=50",
            "eot_timeout_ms",
        ),
        (
            "model=flux-general-en&encoding=linear16&sample_rate=16000&mip_opt_out=perhaps",
            "mip_opt_out",
        ),
    ],
)
def test_bad_query_values_are_400_before_the_upgrade(
    whisper: ServerProcess, query: str, parameter: str
) -> None:
    url = f"ws://127.0.0.1:{whisper.port}/v2/listen?{query}"
    status, body = _status(url, additional_headers={"Authorization": f"Token {KEY}"})
    assert status == 400, body
    assert body["type"] == "Error" and body["parameter"] == parameter
    assert parameter in body["description"]


def test_a_wrong_key_is_401_as_on_v1(whisper: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{whisper.port}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
    status, _ = _status(url, additional_headers={"Authorization": "Token wrong"})
    assert status == 401


def test_pipecat_flux_service_finalizes_each_turn_and_proposes_turn_starts_and_stops(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    result = run_client(
        [
            str(python_of("pipecat")),
            str(CLIENTS / "pipecat_flux.py"),
            "--url",
            f"ws://127.0.0.1:{whisper.port}/v2/listen",
            "--key",
            KEY,
            "--audio",
            str(raws["jfk"]),
        ]
    )
    frames = result["frames"]
    assert not [f for f in frames if f["kind"] == "error"], frames
    kinds = [f["kind"] for f in frames if f["kind"] in ("started", "stopped", "final")]
    finals = [f for f in frames if f["kind"] == "final"]
    assert finals and all(f["finalized"] for f in finals), frames
    assert kinds[0] == "started" and kinds[-1] == "stopped", kinds
    # Each turn: started, then its final, then stopped.
    assert kinds.count("started") == kinds.count("stopped") == len(finals), kinds
    said = " ".join(f["text"] for f in finals)
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.15, said


def test_livekit_stt_v2_preflight_at_the_early_end_then_final_and_end_of_speech(
    whisper: ServerProcess, raws: dict[str, Path]
) -> None:
    result = run_client(
        [
            str(python_of("livekit")),
            str(CLIENTS / "livekit_flux.py"),
            "--url",
            f"ws://127.0.0.1:{whisper.port}/v2/listen",
            "--key",
            KEY,
            "--audio",
            str(raws["jfk_paused"]),
            "--eager",
            "0.3",
            "--eot",
            "0.9",
            "--timeout-ms",
            "5000",
        ]
    )
    events = result["events"]
    types = [e["type"] for e in events if e["type"] != "recognition_usage"]
    assert types[0] == "start_of_speech" and types[-1] == "end_of_speech", types
    finals = [e for e in events if e["type"] == "final_transcript"]
    assert finals and all(e["text"] and e["words"] for e in finals), events
    preflights = [e for e in events if e["type"] == "preflight_transcript"]
    assert preflights, types
    # The early end mid-phrase was taken back (TurnResumed: an interim), then the turn
    # went on to its end.
    after = types[types.index("preflight_transcript") + 1 :]
    assert after[0] == "interim_transcript" and "final_transcript" in after, types
    # Each final is followed by the end of speech; a final after a preflight with nothing
    # between (no resumption) carries the preflight's transcript.
    shown = [e for e in events if e["type"] != "recognition_usage"]
    for at, event in enumerate(shown):
        if event["type"] == "final_transcript":
            assert shown[at + 1]["type"] == "end_of_speech", shown[at:]
        if event["type"] == "preflight_transcript" and shown[at + 1]["type"] == "final_transcript":
            assert shown[at + 1]["text"] == event["text"]
    said = " ".join(e["text"] for e in finals)
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.15, said
