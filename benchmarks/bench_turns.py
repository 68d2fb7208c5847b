"""End-of-turn quality on real speech: the turn model against a plain silence endpoint.

A labelled set is cut from the recordings in ``tests/fixtures/audio``:

- complete: each sentence, with all the recording's speech before it, cut where its speech
  ends and followed by silence (noise at the recording's own floor, or zeros with
  ``--digital-silence``);
- cut-off: the same recordings cut at every word boundary inside a sentence (mid-phrase),
  followed by a pause of ``--pauses`` milliseconds, after which the rest would come.

Word boundaries come from tiny.en word timestamps (``WORDS`` below), snapped to the
quietest 10 ms within 120 ms (inside a sentence) or to where the energy falls away (at a
sentence's end), so that no cut clips a sound.

The model runs through the real ``TurnStage`` and ``TurnEngine``: the stage hears the
pause grow in 32 ms steps (one VAD frame), asks the engine at ``min_pause_ms`` (and every
``rescore_ms`` after, where set), and gets each answer back once the call's measured time
has passed. A cut-off is falsely ended when its turn ends before the pause is over; a
complete sentence's latency is the silence from its end of speech to ``EndOfTurn`` (by the
model, or ``eot_timeout_ms``, 5 s). The silence endpoint ends every pause of 500 ms at
500 ms. Times are measured from the end of speech; a live stream adds the VAD's own delay
in hearing that speech stopped, the same for both.

    python benchmarks/bench_turns.py [--pauses 300 600 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

from streamer.turn.engine import TurnEngine
from streamer.turn.stage import (
    Pause,
    Probability,
    ScoreTurn,
    SpeechStarted,
    TurnEvent,
    TurnEventKind,
    TurnSettings,
    TurnStage,
)

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
RATE = 16000
TICK = 0.032  # a VAD frame: how often a live route observes a growing pause
SILENCE_ENDPOINT = 0.5

Audio = NDArray[np.float32]

# Word end times (seconds) per sentence, from tiny.en word timestamps on each recording.
WORDS: dict[str, list[list[float]]] = {
    "harvard_16k.wav": [
        [0.32, 0.66, 0.96, 1.38, 1.58, 1.78, 2.04, 2.74],  # The birch canoe ... planks.
        [3.16, 3.36, 3.66, 3.92, 4.10, 4.44, 4.76, 5.42],  # Glue the sheet ... background.
        [6.28, 6.42, 6.66, 6.82, 6.98, 7.20, 7.44, 7.54, 7.78],  # It's easy ... well.
        [8.48, 8.96, 9.38, 9.66, 10.04, 10.38, 10.62],  # Four hours ... us.
    ],
    # And so my fellow Americans, ask not what your country can do for you, ask what you
    # can do for your country.
    "jfk.wav": [
        [
            *[0.74, 1.06, 1.44, 1.76, 2.28, 3.88, 4.52, 5.70, 6.02, 6.36, 6.76, 7.02, 7.26],
            *[7.59, 8.66, 8.94, 9.28, 9.50, 9.72, 9.92, 10.22, 10.48],
        ],
    ],
    "big_dog_8k.wav": [[0.30, 0.50, 0.74, 0.96, 1.10, 1.24, 1.36, 1.46, 1.62, 2.12]],
    "cross_8k.wav": [[0.64, 0.84, 1.28, 1.36, 1.74, 2.26]],
    "front_center_48k.wav": [[0.60, 1.22]],
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    complete: bool
    speech: Audio  # everything up to the end of speech
    noise_rms: float


def load(name: str) -> Audio:
    audio, rate = sf.read(AUDIO / name, dtype="float32")
    if rate != RATE:
        audio = soxr.resample(audio, rate, RATE)
    return np.asarray(audio, dtype=np.float32)


def frame_rms(audio: Audio, frame: int = 160) -> NDArray[np.float64]:
    whole = len(audio) // frame
    frames = audio[: whole * frame].reshape(whole, frame).astype(np.float64)
    return np.asarray(np.sqrt((frames**2).mean(axis=1) + 1e-12))


def quietest(rms: NDArray[np.float64], at: float, reach: float = 0.12) -> int:
    """The sample at the centre of the quietest 10 ms frame within ``reach`` of ``at``."""
    low = max(0, int((at - reach) * 100))
    high = min(len(rms), int((at + reach) * 100) + 1)
    best = low + int(np.argmin(rms[low:high]))
    return best * 160 + 80


def speech_end(rms: NDArray[np.float64], at: float, floor: float) -> int:
    """Where a sentence's last sound fades out: the start of the first 100 ms at or below
    the floor from 200 ms before its last word's timestamp (which can be early or late)."""
    threshold = max(floor * 4, float(rms.max()) / 100)  # 40 dB below the loudest frame
    i = max(0, int((at - 0.2) * 100))
    while i < len(rms) and not (rms[i : i + 10] <= threshold).all():
        i += 1
    return i * 160


def cases(digital_silence: bool = False) -> list[Case]:
    out: list[Case] = []
    for name, sentences in WORDS.items():
        audio = load(name)
        rms = frame_rms(audio)
        floor = float(np.percentile(rms, 2))
        noise = 0.0 if digital_silence else max(floor, 1e-4)
        for s, ends in enumerate(sentences):
            for w, at in enumerate(ends):
                last = w == len(ends) - 1
                cut = speech_end(rms, at, floor) if last else quietest(rms, at)
                label = f"{name.removesuffix('.wav')}:{s + 1}.{w + 1}"
                out.append(Case(label, last, audio[:cut].copy(), noise))
    return out


class Scorer:
    """The engine's answers, kept per (case, silence) since they do not change."""

    def __init__(self, engine: TurnEngine, model_ms: float | None) -> None:
        self.engine = engine
        self.model_ms = model_ms  # None: each answer takes the call's measured time
        self.stream = engine.open_stream()
        self.cache: dict[tuple[str, int], tuple[float, float]] = {}
        self.seconds: list[float] = []

    def __call__(self, case: Case, silence: float) -> tuple[float, float]:
        key = (case.name, round(silence * 1000))
        if key not in self.cache:
            rng = np.random.default_rng(zlib.crc32(case.name.encode()))
            quiet = rng.normal(0, case.noise_rms, int(silence * RATE)).astype(np.float32)
            audio = np.concatenate((case.speech, quiet))
            began = time.perf_counter()
            answer = self.engine.submit(self.stream, audio).result(60)
            took = time.perf_counter() - began
            assert answer is not None
            self.seconds.append(took)
            self.cache[key] = (
                answer.probability,
                took if self.model_ms is None else self.model_ms / 1000,
            )
        return self.cache[key]


def model_ends(case: Case, settings: TurnSettings, limit: float, scorer: Scorer) -> float | None:
    """The silence (seconds) at which the stage ends the turn, or None if not by ``limit``.

    Two clocks run together: the pause, observed every ``TICK``, and the answers, each due
    when its call's measured time has passed since it was asked.
    """
    stage = TurnStage(settings)
    stage.handle(SpeechStarted(0.0))
    end = len(case.speech) / RATE
    answers: list[tuple[float, Probability]] = []  # (due at silence, answer), in due order
    tick = TICK
    while True:
        if answers and answers[0][0] <= tick:
            now, answer = answers.pop(0)
            outputs = stage.handle(answer)
        else:
            now = tick
            tick += TICK
            outputs = stage.handle(Pause(speech_end=end, now=end + now))
        if now > limit:
            return None
        for output in outputs:
            if isinstance(output, ScoreTurn):
                probability, took = scorer(case, output.audio_end - end)
                answers.append((now + took, Probability(output.request, probability)))
                answers.sort(key=lambda item: item[0])
            elif isinstance(output, TurnEvent) and output.kind is TurnEventKind.END_OF_TURN:
                return now


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pauses", type=int, nargs="+", default=[300, 600, 1000])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--min-pause", type=int, nargs="+", default=[200])
    parser.add_argument("--rescore", type=int, nargs="+", default=[0, 300])
    parser.add_argument(
        "--model-ms",
        type=float,
        help="each answer arrives this long after it is asked (default: as measured here)",
    )
    parser.add_argument(
        "--digital-silence",
        action="store_true",
        help="pauses of zeros (as a client's keep-alive sends) instead of the recording's floor",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    labelled = cases(args.digital_silence)
    complete = [c for c in labelled if c.complete]
    cut = [c for c in labelled if not c.complete]
    print(f"{len(complete)} complete sentences, {len(cut)} mid-phrase cuts")
    results: list[dict[str, object]] = []
    with TurnEngine(threads=1) as engine:
        scorer = Scorer(engine, args.model_ms)
        header = "method".ljust(40) + "".join(f"cut@{p}ms".rjust(11) for p in args.pauses)
        print(header + "  complete: P50 / P95 ms, ended by model")
        row = "silence 500 ms".ljust(40)
        rates = {p: sum(p / 1000 >= SILENCE_ENDPOINT for _ in cut) / len(cut) for p in args.pauses}
        row += "".join(f"{rates[p]:>11.0%}" for p in args.pauses)
        print(row + f"  {500:>5.0f} / {500:>5.0f}")
        results.append(
            {"method": "silence", "ms": 500, "false_cutoff": rates, "p50_ms": 500, "p95_ms": 500}
        )
        for min_pause in args.min_pause:
            for rescore in args.rescore:
                for threshold in args.thresholds:
                    settings = TurnSettings(
                        eot_threshold=threshold,
                        min_pause_ms=min_pause,
                        rescore_ms=rescore or None,
                    )
                    ended = {
                        p: [model_ends(c, settings, p / 1000, scorer) is not None for c in cut]
                        for p in args.pauses
                    }
                    false = {p: sum(ended[p]) / len(cut) for p in args.pauses}
                    longest = max(args.pauses)
                    by_recording: dict[str, list[int]] = {}
                    for case, was_ended in zip(cut, ended[longest], strict=True):
                        counts = by_recording.setdefault(case.name.split(":")[0], [0, 0])
                        counts[0] += was_ended
                        counts[1] += 1
                    ends = [model_ends(c, settings, 5.0, scorer) for c in complete]
                    latencies = [1000 * (e if e is not None else 5.0) for e in ends]
                    by_model = sum(e is not None and e < 5.0 for e in ends)
                    label = f"model >= {threshold} at {min_pause} ms"
                    label += f", again every {rescore}" if rescore else ", once"
                    row = label.ljust(40) + "".join(f"{false[p]:>11.0%}" for p in args.pauses)
                    p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
                    print(row + f"  {p50:>5.0f} / {p95:>5.0f}, {by_model}/{len(complete)}")
                    print(
                        " " * 4
                        + f"cut off at {longest} ms, by recording: "
                        + ", ".join(f"{k} {n}/{t}" for k, (n, t) in by_recording.items())
                    )
                    results.append(
                        {
                            "method": "model",
                            "eot_threshold": threshold,
                            "min_pause_ms": min_pause,
                            "rescore_ms": rescore or None,
                            "false_cutoff": false,
                            "p50_ms": p50,
                            "p95_ms": p95,
                            "ended_by_model": by_model,
                            "false_cutoffs_by_recording": {
                                f"{name} at {longest} ms": f"{n}/{total}"
                                for name, (n, total) in by_recording.items()
                            },
                            "complete": len(complete),
                        }
                    )
        calls = scorer.seconds
        print(
            f"model calls: {len(calls)}, median {1000 * statistics.median(calls):.0f} ms, "
            f"CPU per window {1000 * engine.cost_per_window:.0f} ms"
        )
    if args.json:
        probabilities = {
            f"{name} +{ms} ms": round(p, 3) for (name, ms), (p, _) in sorted(scorer.cache.items())
        }
        report = {
            "cut": len(cut),
            "complete": len(complete),
            "model_ms": args.model_ms,
            "digital_silence": args.digital_silence,
            "median_call_ms": 1000 * statistics.median(calls),
            "cpu_per_window_ms": 1000 * engine.cost_per_window,
            "results": results,
            "probabilities": probabilities,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
