"""Whisper tiny.en (the whisper extra) transcribes the real speech fixtures."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from faster_whisper.audio import pad_or_trim
from transcripts import SAID, word_error_rate

from streamer.app import build_model
from streamer.bench.expected import decode_channels
from streamer.client import load_audio
from streamer.config import Settings
from streamer.inference.model import Output, UnsupportedModel, WordTimedModel
from streamer.inference.whisper import (
    WhisperParams,
    WhisperRecognizer,
    has_words,
    is_no_speech,
    repeats_a_phrase,
    token_budget,
    without_looping_tail,
    without_repeated_phrase,
    without_repeats,
)

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"


def speech(name: str) -> np.ndarray:
    """A fixture as the server hands it to the model: mono float32 at 16 kHz."""
    audio = load_audio(AUDIO / name)
    return decode_channels(audio.data, dict(audio.format), 16000)[0]


CEILINGS = {
    "jfk.wav": 0.0,
    "harvard_16k.wav": 0.1,
    "front_center_48k.wav": 0.0,
    "cross_8k.wav": 0.0,  # mu-law telephony, through the resampler
    "big_dog_8k.wav": 0.4,  # tiny.en mishears "loved to chew" at 8 kHz
}
NAMES = list(CEILINGS)


@pytest.fixture(scope="module")
def whisper() -> WhisperRecognizer:
    return WhisperRecognizer()


@pytest.fixture(scope="module")
def alone(whisper: WhisperRecognizer) -> dict[str, Output]:
    """Each fixture decoded on its own."""
    return {name: whisper.infer(speech(name)) for name in NAMES}


@pytest.fixture(scope="module")
def batched(whisper: WhisperRecognizer) -> dict[str, Output]:
    """All the fixtures (and noise) decoded in one call, with word times."""
    names = [*NAMES, "modem_noise_8k.wav"]
    audio = [*map(speech, NAMES), speech("modem_noise_8k.wav")[: 10 * 16000]]
    outputs = whisper.infer_batch(audio, [True] * len(audio))
    assert all(isinstance(out, dict) for out in outputs)
    return dict(zip(names, cast(list[Output], outputs), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_it_transcribes_real_speech(alone: dict[str, Output], name: str) -> None:
    text = alone[name]["text"]
    assert word_error_rate(SAID[name], text) <= CEILINGS[name], text
    assert "words" not in alone[name]  # not asked for


def test_a_batch_gives_each_input_the_text_it_gets_alone(
    alone: dict[str, Output], batched: dict[str, Output]
) -> None:
    assert {name: batched[name]["text"] for name in NAMES} == {
        name: out["text"] for name, out in alone.items()
    }
    assert batched["modem_noise_8k.wav"] == {"text": "", "words": []}


@pytest.mark.parametrize("name", NAMES)
def test_word_times_lie_within_the_input_in_order(batched: dict[str, Output], name: str) -> None:
    out = batched[name]
    duration = len(speech(name)) / 16000
    words = out["words"]
    assert "".join(w["word"] for w in words) == "".join(out["text"].split())
    assert all(0 <= w["start"] <= w["end"] <= duration for w in words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    assert all(0 < w["confidence"] <= 1 for w in words)
    # Time, not order alone: "Americans" is spoken about 1.8-2.3 s into jfk.wav.
    if name == "jfk.wav":
        americans = next(w for w in words if w["word"].startswith("Americans"))
        assert 1.4 <= americans["start"] <= 2.2 and americans["end"] <= 2.8


def test_an_input_longer_than_one_window_is_transcribed_whole_with_word_times(
    whisper: WhisperRecognizer,
) -> None:
    names = ["jfk.wav", "harvard_16k.wav", "jfk.wav"]
    audio = np.concatenate([speech(name) for name in names])  # about 33 s
    [out] = whisper.infer_batch([audio], [True])
    assert isinstance(out, dict)
    assert word_error_rate(" ".join(SAID[n] for n in names), out["text"]) <= 0.1, out["text"]
    starts = [w["start"] for w in out["words"]]
    assert starts == sorted(starts) and 30 < starts[-1] <= len(audio) / 16000


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
    outputs = whisper.infer_batch([np.zeros(0, dtype=np.float32), *map(speech, names)])
    assert outputs[0] == {"text": ""}
    texts = [output["text"] for output in outputs[1:] if isinstance(output, dict)]
    assert [word_error_rate(SAID[n], t) for n, t in zip(names, texts, strict=True)] == [0, 0]


def test_it_is_a_model_the_settings_can_name() -> None:
    model = build_model(Settings(inference={"model": "whisper"}, whisper={"max_batch_size": 3}))
    assert isinstance(model, WhisperRecognizer) and isinstance(model, WordTimedModel)
    assert (model.name, model.sample_rate, model.max_batch_size) == ("whisper-tiny.en", 16000, 3)


def test_a_directory_without_a_model_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=r"model\.bin is missing"):
        WhisperRecognizer(WhisperParams(model_path=tmp_path))


def looping_clip() -> np.ndarray:
    """2.2 s of harvard_16k.wav cut mid-word, then 2.4 s of silence: a segment as a VAD
    may cut it. Greedy tiny.en decodes it as "it on the smooth planks. Gloobish." and then
    "Gloobish." until Whisper's 224-token limit. (A cut a few samples off may not loop:
    where a loop starts is that fragile.)"""
    audio = speech("harvard_16k.wav")[18317:53076]
    return np.concatenate([audio, np.zeros(37684, dtype=np.float32)])


def greedy(whisper: WhisperRecognizer, audio: np.ndarray, budget: int) -> tuple[bool, str, int]:
    """One greedy decode of ``audio`` within ``budget`` tokens, with no loop check: whether
    it ended, its text and its number of tokens."""
    features = whisper._model.feature_extractor(audio)
    frames = features.shape[-1] - 1
    window = whisper._window(frames)
    encoded = whisper._model.encode(np.stack([pad_or_trim(features[:, :frames], window)]))
    [decoded] = whisper._generate(encoded, [list(whisper._prompt)], [budget], 1, 0.0)
    return decoded.ended, whisper._tokenizer.decode(decoded.tokens), len(decoded.tokens)


def test_the_clip_loops_when_nothing_bounds_the_decode(whisper: WhisperRecognizer) -> None:
    ended, text, tokens = greedy(whisper, looping_clip(), 224)
    assert not ended and tokens == 224
    assert text.count("Gloobish") > 20, text


def repeating_turn() -> np.ndarray:
    """harvard_16k.wav from 2.592 s to 7.808 s, two sentences as a turn detector cut them
    (a turn's pad, its speech, to the start of its pause). Greedy tiny.en says the second
    one three times over, within its budget and at a compression ratio under 2.4."""
    return speech("harvard_16k.wav")[41472:124928]


def test_a_sentence_said_over_again_is_a_loop_too(whisper: WhisperRecognizer) -> None:
    ended, said_over, _ = greedy(whisper, repeating_turn(), 60)
    assert ended and said_over.count("depth") == 3, said_over
    text = whisper.infer(repeating_turn())["text"]
    assert text.count("depth") == 1, text
    said = "Glue the sheet to the dark blue background. It's easy to tell the depth of a well."
    assert word_error_rate(said, text) <= 0.1, text


@pytest.mark.parametrize(
    ("tokens", "loop", "kept"),
    [
        (list(range(11)) * 2, True, list(range(11))),  # a sentence twice in a row
        ([9, *range(11), *range(11), *range(11), 5], True, [9, *range(11)]),
        ([1, 2] * 5, True, [1, 2]),  # "Hello? Hello? Hello? Hello? Hello?"
        ([1, 2] * 4, False, [1, 2] * 4),  # a word or two, said again: speech
        ([3, *range(6), *range(6)], False, [3, *range(6), *range(6)]),
        (list(range(30)), False, list(range(30))),
        ([], False, []),
    ],
)
def test_a_phrase_repeated_in_a_row_is_found_and_cut_after_its_first_copy(
    tokens: list[int], loop: bool, kept: list[int]
) -> None:
    assert repeats_a_phrase(tokens) is loop
    assert without_repeated_phrase(tokens) == kept


def test_a_looping_decode_is_cut_to_its_budget_and_decoded_again_without_repeats(
    whisper: WhisperRecognizer,
) -> None:
    out = whisper.infer(looping_clip())
    assert out == {"text": "it on the smooth planks."}


def test_without_a_fallback_the_repeats_are_cut_after_their_first_occurrence() -> None:
    plain = WhisperRecognizer(WhisperParams(fallback_beam_size=1))
    text = plain.infer(looping_clip())["text"]
    assert text.startswith("it on the smooth planks.") and text.count("Gloob") <= 1, text


def test_a_looping_decode_in_a_batch_leaves_the_others_alone(whisper: WhisperRecognizer) -> None:
    names = ["cross_8k.wav", "front_center_48k.wav"]
    outputs = whisper.infer_batch([looping_clip(), *map(speech, names)], [True] * 3)
    assert isinstance(outputs[0], dict) and outputs[0]["text"] == "it on the smooth planks."
    assert [w["word"] for w in outputs[0]["words"]] == ["it", "on", "the", "smooth", "planks."]
    texts = [out["text"] for out in outputs[1:] if isinstance(out, dict)]
    assert [word_error_rate(SAID[n], t) for n, t in zip(names, texts, strict=True)] == [0, 0]


def test_a_short_budget_cuts_a_loop_after_its_first_copy_too() -> None:
    # 17 tokens: "it on the smooth planks." (7), then the loop's block (4) twice and a bit.
    short = WhisperRecognizer(
        WhisperParams(base_tokens=1, tokens_per_second=3.4, fallback_beam_size=1)
    )
    assert token_budget(short.params, len(looping_clip()) / 16000) == 17
    assert short.infer(looping_clip()) == {"text": "it on the smooth planks. Gloobish"}


@pytest.mark.parametrize(
    ("tokens", "kept"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4]),
        ([1, 2, 3, 1, 2], [1, 2, 3, 1, 2]),  # a block and a part of it: no loop yet
        ([1, 2, 3, 1, 2, 3, 1], [1, 2, 3]),
        ([5, 6, 7, 8, 6, 7, 8, 6], [5, 6, 7, 8]),
        ([1, 2, 2], [1, 2]),
        ([], []),
    ],
)
def test_a_decode_that_ran_out_loses_its_looping_tail(tokens: list[int], kept: list[int]) -> None:
    assert without_looping_tail(tokens) == kept


@pytest.mark.parametrize(
    ("seconds", "budget"), [(0.0, 8), (1.6, 24), (10.0, 108), (30.0, 224), (300.0, 224)]
)
def test_the_token_budget_grows_with_the_audio_up_to_whispers_limit(
    seconds: float, budget: int
) -> None:
    assert token_budget(WhisperParams(), seconds) == budget


def test_every_fixture_ends_well_within_its_budget(alone: dict[str, Output]) -> None:
    # The budget is a bound on loops, not on speech: fast read speech takes half of it.
    whisper = WhisperRecognizer()
    for name in NAMES:
        tokens = whisper._tokenizer.encode(" " + alone[name]["text"])
        assert len(tokens) <= token_budget(WhisperParams(), len(speech(name)) / 16000) / 2


@pytest.mark.parametrize(
    ("tokens", "kept"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4]),
        ([1, 2, 2, 3], [1, 2, 2, 3]),  # twice is speech ("very very")
        ([1, 2, 2, 2, 2], [1, 2]),
        ([5, 1, 2, 1, 2, 1, 2, 1], [5, 1, 2]),
        ([7, 8, 9, 7, 8, 9, 7, 8, 9], [7, 8, 9]),
        ([], []),
    ],
)
def test_repeats_are_cut_after_their_first_occurrence(tokens: list[int], kept: list[int]) -> None:
    assert without_repeats(tokens) == kept


def real_cuts() -> list[np.ndarray]:
    """Sixteen cuts of the speech fixtures, 0.6 to 9 s, some with silence after them, and
    the cut that loops (its decode goes through the budget and the beam)."""
    rng = np.random.default_rng(20)
    cuts = [looping_clip()]
    for _ in range(15):
        audio = speech(NAMES[int(rng.integers(len(NAMES)))])
        length = int(rng.uniform(0.6, 9.0) * 16000)
        start = int(rng.integers(0, max(1, len(audio) - length)))
        silence = np.zeros(int(rng.uniform(0, 1.5) * 16000), dtype=np.float32)
        cuts.append(np.concatenate([audio[start : start + length], silence]))
    return cuts


@pytest.mark.parametrize("beam_size", [1, 2])
def test_a_cut_has_the_same_text_alone_and_in_batches_of_any_size_and_company(
    beam_size: int,
) -> None:
    whisper = WhisperRecognizer(WhisperParams(beam_size=beam_size, max_batch_size=16))
    cuts = real_cuts()
    # Text and word times: everything an output holds.
    alone = [whisper.infer_batch([cut], [True])[0] for cut in cuts]
    texts = [out["text"] for out in alone if isinstance(out, dict)]
    assert texts[0] == "it on the smooth planks." and sum(map(bool, texts)) >= 14
    rng = np.random.default_rng(beam_size)
    for size in (2, 3, 5, 16):
        order = [int(i) for i in rng.permutation(len(cuts))]
        for at in range(0, len(order), size):
            members = order[at : at + size]
            outputs = whisper.infer_batch([cuts[i] for i in members], [True] * len(members))
            assert outputs == [alone[i] for i in members], (size, members)


def test_with_float32_weights_a_batch_moves_scores_in_the_seventh_digit_only() -> None:
    # Float products summed in another order in a batch: not bit for bit, but bounded.
    whisper = WhisperRecognizer(WhisperParams(compute_type="float32"))
    cuts = [speech(name) for name in NAMES]
    window = 1000  # 10 s of feature frames: every fixture but jfk.wav fits
    features = [
        pad_or_trim(whisper._model.feature_extractor(cut[: 9 * 16000])[:, :-1], window)
        for cut in cuts
    ]
    prompts = [list(whisper._prompt) for _ in cuts]
    together = whisper._generate(
        whisper._model.encode(np.stack(features)), prompts, [100] * len(cuts), 1, 0.0
    )
    for feature, batched in zip(features, together, strict=True):
        [alone] = whisper._generate(
            whisper._model.encode(np.stack([feature])), prompts[:1], [100], 1, 0.0
        )
        assert alone.tokens == batched.tokens
        assert abs(alone.avg_logprob - batched.avg_logprob) < 1e-5
        assert abs(alone.no_speech_prob - batched.no_speech_prob) < 1e-5


def test_a_beam_cut_short_by_its_budget_is_shared_only_with_inputs_of_that_budget(
    whisper: WhisperRecognizer,
) -> None:
    features = pad_or_trim(whisper._model.feature_extractor(speech("jfk.wav")[: 9 * 16000]), 1000)
    one = whisper._model.encode(np.stack([features]))
    two = whisper._model.encode(np.stack([features, features]))
    prompts = [list(whisper._prompt)] * 2
    [alone] = whisper._generate(one, prompts[:1], [15], 5, 0.0)
    assert not alone.ended
    # Where one call runs on past an input's budget, its beam keeps other hypotheses...
    [shared, _] = whisper._generate_call(two, prompts, [15, 200], 5, 0.0)
    assert shared.tokens != alone.tokens
    # ...so a beam is shared only by inputs of the same budget.
    [batched, longer] = whisper._generate(two, prompts, [15, 200], 5, 0.0)
    assert batched == alone and longer.ended
