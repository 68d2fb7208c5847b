"""Whisper on the segmented route: N concurrent real-time streams of real speech.

Each stream plays a long recording made of the speech fixtures one after another, a second
of silence between them, starting at a different fixture. (A fixture repeated back to back
is no test: with no pause between the repeats, the segmenter hands Whisper one segment of
the same sentence over and over, and greedy decoding then loops on it to its token limit.)

For each configuration and stream count, a fresh ``streamer serve --model whisper`` and a
``streamer bench`` load (the same runner): the final delay p50/p95, the word error rate of
the finals against the reference transcripts (tests/transcripts.py), the server's CPU per
audio-second and its throughput in audio-seconds per CPU-second. Each file is first
streamed alone as fast as it goes, for the lone-stream word error rate.

    python benchmarks/bench_whisper.py [--streams 1 8 12 16] [--configs batched single]
        [--duration 20] [--ramp 5] [--json out.json]
        [--device cuda cpu] [--objective-ms 2000] [--ttfs 1 32]

``--device`` runs every configuration on each device named (``whisper.device``: ``auto``,
``cpu``, ``cuda``, ``cuda:N``), the same recordings on each, so a GPU is measured against
the CPU; with a GPU the server's GPU utilisation and memory are sampled (``nvidia-smi``)
through each run. ``--objective-ms``: the real-time streams a configuration carries are the
most streams whose final delay p95 stayed at or under it (2000 ms: the objective of the
GPU tier), and once a count misses it, larger counts are skipped. ``--ttfs``: the time
from the end of speech to its final (``ttfs_turns.py``) at these concurrent streams, on
the first configuration of each device.

Configurations (``--configs``; ``NAME:VAR=VALUE,...`` adds one of your own):

- ``batched``: the defaults (segments of several streams decoded in one call);
- ``single``: one segment a call (``inference.max_batch = 1``), other settings alike;
- ``full-window``: batched, every input padded to Whisper's full 30 s window;
- ``before``: one at a time, full window (what the recognizer did before batching).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from streamer.bench.expected import ExpectedResults, decode_channels
from streamer.bench.runner import LoadSpec, RunResult, run_load
from streamer.cli.client import load_audio
from streamer.spawn import spawn_server

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
sys.path.insert(0, str(ROOT / "tests"))
from transcripts import SAID, edits, words  # noqa: E402  (the references live beside the fixtures)
from ttfs_turns import make_turns, run_ttfs  # noqa: E402  (beside this file)

FILES = ["jfk.wav", "harvard_16k.wav", "cross_8k.wav", "big_dog_8k.wav", "front_center_48k.wav"]
CONFIGS: dict[str, dict[str, str]] = {
    "batched": {},
    "single": {"STREAMER_INFERENCE__MAX_BATCH": "1"},
    "full-window": {"STREAMER_WHISPER__WINDOW_STEP_SECONDS": "30"},
    "before": {"STREAMER_INFERENCE__MAX_BATCH": "1", "STREAMER_WHISPER__WINDOW_STEP_SECONDS": "30"},
}


RATE = 16000
GAP_SECONDS = 1.0


def medleys(folder: Path) -> dict[Path, str]:
    """One long 16 kHz recording per starting fixture, and what is said in it."""
    speech = []
    for name in FILES:
        loaded = load_audio(AUDIO / name)
        speech.append(decode_channels(loaded.data, dict(loaded.format), RATE)[0])
    gap = np.zeros(round(GAP_SECONDS * RATE), dtype=np.float32)
    made = {}
    for first in range(len(FILES)):
        order = [(first + k) % len(FILES) for k in range(len(FILES))]
        audio = np.concatenate([part for k in order for part in (speech[k], gap)])
        path = folder / f"medley{first}.wav"
        sf.write(path, audio, RATE, subtype="PCM_16")
        made[path] = " ".join(SAID[FILES[k]] for k in order)
    return made


def word_errors(result: RunResult, said: dict[str, str]) -> dict[str, Any]:
    """Edits and reference words per recording, over every stream of the run."""
    per_file: dict[str, list[int]] = {}
    for stats, record in zip(result.streams, _records(result), strict=True):
        name, _, times = stats.audio.partition(".wavx")
        name = name if name.endswith(".wav") else f"{name}.wav"
        repeats = int(times) if times.isdigit() else 1
        reference = words(said[name]) * repeats
        finals = [
            str(e.get("text", ""))
            for e in record
            if e.get("type") == "segment" and e.get("is_final", True)
        ]
        counts = per_file.setdefault(name, [0, 0])
        counts[0] += edits(reference, words(" ".join(finals)))
        counts[1] += len(reference)
    total = [sum(c[0] for c in per_file.values()), sum(c[1] for c in per_file.values())]
    return {
        "wer": round(total[0] / max(1, total[1]), 4),
        "per_file": {k: {"edits": e, "words": n} for k, (e, n) in per_file.items()},
    }


def lone_wer_of_mix(lone: dict[str, dict[str, int]], mix: dict[str, dict[str, int]]) -> float:
    """The WER the run's recordings had, each streamed alone (weighted as in the run)."""
    edits_ = sum(lone[k]["edits"] * (n["words"] // lone[k]["words"]) for k, n in mix.items())
    return round(edits_ / max(1, sum(n["words"] for n in mix.values())), 4)


class GpuMonitor:
    """Samples GPU utilisation and memory with ``nvidia-smi`` while a run lasts."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory used MiB)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._interval_ms = interval_ms

    @staticmethod
    def available() -> bool:
        return shutil.which("nvidia-smi") is not None

    def __enter__(self) -> GpuMonitor:
        if not self.available():
            return self
        self._process = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                f"-lms={self._interval_ms}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                # One line per GPU: the first (the server's cuda:0).
                util, memory = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, memory))

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        util = [u for u, _ in self.samples]
        memory = [m for _, m in self.samples]
        return {
            "utilisation_mean_pct": round(sum(util) / len(util), 1),
            "utilisation_max_pct": max(util),
            "memory_used_max_mib": max(memory),
            "samples": len(self.samples),
        }


@contextmanager
def gpu_sampling(enabled: bool) -> Iterator[GpuMonitor | None]:
    if not enabled:
        yield None
        return
    with GpuMonitor() as monitor:
        yield monitor


def _records(result: RunResult) -> list[list[dict[str, Any]]]:
    return [record.events for record in result.records]


BASE_ENV = {"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_LOG_LEVEL": "warning"}


async def one_run(
    env: dict[str, str], spec_args: dict[str, Any], said: dict[str, str]
) -> dict[str, Any]:
    with spawn_server(env={**BASE_ENV, **env}, start_timeout=180) as server:
        device = (server.health() or {}).get("device")
        spec = LoadSpec(url=server.url("segmented"), **spec_args)
        with gpu_sampling(GpuMonitor.available() and str(device).startswith("cuda")) as gpu:
            result = await run_load(spec, expected=ExpectedResults(), server_pid=server.pid)
    s = result.summary
    cpu = (s.get("server_cpu") or {}).get("cpu_seconds")
    audio = s["audio_seconds"]
    return {
        "streams": spec.streams,
        "device": device,
        "gpu": gpu.summary() if gpu is not None else None,
        "clean": result.clean,
        "final_delay_ms": {
            k: None if s["final_delay"][k] is None else round(1000 * s["final_delay"][k])
            for k in ("p50", "p95", "max")
        },
        "finals": s["results"]["received"],
        "interims": sum(
            1
            for record in result.records
            for e in record.events
            if e.get("type") == "segment" and not e.get("is_final", True)
        ),
        "interim_interval_ms_p50": _ms(s["interim_interval"]["p50"]),
        "expected_finals": s["results"]["expected"],
        **word_errors(result, said),
        "audio_seconds": audio,
        "server_cpu_seconds": cpu,
        "cpu_per_audio_second": round(cpu / audio, 4) if cpu and audio else None,
        "audio_seconds_per_cpu_second": round(audio / cpu, 2) if cpu and audio else None,
        "server_cores_mean": (s.get("server_cpu") or {}).get("cores_mean"),
        "server_cores_max_1s": (s.get("server_cpu") or {}).get("cores_max_1s"),
        "other_cores_mean": (s.get("machine_cpu") or {}).get("other_cores_mean"),
    }


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(1000 * seconds)


def parse_configs(names: list[str]) -> dict[str, dict[str, str]]:
    chosen = {}
    for name in names:
        label, _, extra = name.partition(":")
        env = dict(CONFIGS.get(label, {}))
        for pair in filter(None, extra.split(",")):
            key, _, value = pair.partition("=")
            env[key if key.startswith("STREAMER_") else f"STREAMER_{key}"] = value
        chosen[name] = env
    return chosen


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 12, 16])
    parser.add_argument("--configs", nargs="+", default=["batched", "single"])
    parser.add_argument(
        "--duration", type=float, default=0.0, help="least audio seconds a stream (repeats)"
    )
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to start them all")
    parser.add_argument("--word-times", action="store_true", help="finals carry word times")
    parser.add_argument("--interim", action="store_true", help="ask for interim results")
    parser.add_argument("--no-lone", action="store_true", help="skip the lone-stream runs")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--device", nargs="+", default=["auto"], help="whisper.device values to compare"
    )
    parser.add_argument(
        "--objective-ms",
        type=float,
        default=0.0,
        help="final delay p95 objective: the streams carried at it; larger counts are "
        "skipped once one misses it (0: run every count)",
    )
    parser.add_argument(
        "--ttfs", type=int, nargs="*", default=[], help="TTFS at these concurrent streams"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-whisper-") as folder:
        await bench(args, medleys(Path(folder)))


async def bench(args: argparse.Namespace, made: dict[Path, str]) -> None:
    files = tuple(made)
    said = {path.name: text for path, text in made.items()}
    common = {
        "min_audio_seconds": args.duration,
        "word_times": args.word_times,
        "interim": args.interim,
    }
    report: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}, "runs": {}}
    for device in args.device:
        on_device = {"STREAMER_WHISPER__DEVICE": device}
        lone: dict[str, dict[str, int]] = {}
        for label, env in parse_configs(args.configs).items():
            env = {**on_device, **env}
            key = label if len(args.device) == 1 else f"{device}/{label}"
            runs = report["runs"].setdefault(key, {"env": env, "loads": []})
            # Alone, a segment's text does not depend on the settings compared here but the
            # window (and the device): the first configuration's lone runs serve for all.
            if not args.no_lone and not lone:
                for path in files:
                    spec = {"files": (path,), "streams": 1, "speed": 0.0, **common}
                    lone.update((await one_run(env, spec, said))["per_file"])
                runs["lone"] = lone
                print(f"{key}: each recording alone: {lone}", flush=True)
            for n in args.streams:
                spec = {"files": files, "streams": n, "ramp": args.ramp, **common}
                figures = await one_run(env, spec, said)
                if not args.no_lone:
                    figures["lone_wer"] = lone_wer_of_mix(lone, figures["per_file"])
                runs["loads"].append(figures)
                print(
                    f"{key} {n:3d} streams on {figures['device']}: final delay p50 "
                    f"{figures['final_delay_ms']['p50']} ms"
                    f" p95 {figures['final_delay_ms']['p95']} ms, WER {figures['wer']:.3f} "
                    f"(alone {figures.get('lone_wer')}), "
                    f"{figures['cpu_per_audio_second']} CPU-s/audio-s "
                    f"({figures['audio_seconds_per_cpu_second']} audio-s/CPU-s), "
                    f"server {figures['server_cores_mean']} cores "
                    f"(max {figures['server_cores_max_1s']})"
                    f", others {figures['other_cores_mean']}, GPU {figures['gpu']}"
                    f", clean {figures['clean']}",
                    flush=True,
                )
                if args.objective_ms and not meets(figures, args.objective_ms):
                    print(f"{key}: {n} streams miss the objective; no larger count", flush=True)
                    break
            if args.objective_ms:
                runs["realtime_streams"] = carried(runs["loads"], args.objective_ms)
                print(
                    f"{key}: {runs['realtime_streams']} real-time streams at final delay p95 "
                    f"<= {args.objective_ms:.0f} ms",
                    flush=True,
                )
            if args.ttfs and label == next(iter(parse_configs(args.configs))):
                runs["ttfs"] = [await ttfs_run(env, n, args.ramp) for n in args.ttfs]
        report.setdefault("memory_per_stream_mib", {})[device] = memory_per_stream(
            report["runs"], device, len(args.device) == 1
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def meets(figures: dict[str, Any], objective_ms: float) -> bool:
    """A clean run whose final delay p95 is at most the objective."""
    p95 = figures["final_delay_ms"]["p95"]
    return bool(figures["clean"]) and p95 is not None and p95 <= objective_ms


def carried(loads: list[dict[str, Any]], objective_ms: float) -> int:
    """The most streams of a run that met the objective (0: none did)."""
    return max((f["streams"] for f in loads if meets(f, objective_ms)), default=0)


def memory_per_stream(runs: dict[str, Any], device: str, alone: bool) -> float | None:
    """GPU memory each added stream took: the slope between the fewest and most streams."""
    points = [
        (load["streams"], load["gpu"]["memory_used_max_mib"])
        for key, run in runs.items()
        if alone or key.startswith(f"{device}/")
        for load in run["loads"]
        if load.get("gpu")
    ]
    if len({n for n, _ in points}) < 2:
        return None
    (n0, m0), (n1, m1) = min(points), max(points)
    return round((m1 - m0) / (n1 - n0), 2)


async def ttfs_run(env: dict[str, str], streams: int, ramp: float) -> Any:
    """TTFS at ``streams`` concurrent sockets of turns (the speech fixtures, one a turn)."""
    speech = {}
    for name in FILES:
        loaded = load_audio(AUDIO / name)
        speech[name] = decode_channels(loaded.data, dict(loaded.format), RATE)[0]
    turns = make_turns(speech)
    with spawn_server(env={**BASE_ENV, **env}, start_timeout=180) as server:
        figures = await run_ttfs(f"ws://{server.host}:{server.port}", turns, streams, ramp)
    errors = total = 0
    for stream in figures.pop("per_stream"):
        reference = words(" ".join(SAID[name] for name in stream["turns"]))
        errors += edits(reference, words(stream["text"]))
        total += len(reference)
    figures["wer"] = round(errors / max(1, total), 4)
    print(
        f"TTFS at {streams} streams on {env.get('STREAMER_WHISPER__DEVICE')}: "
        f"{figures['ttfs_ms']} over {figures['answered']} turns "
        f"({figures['unanswered']} unanswered), WER {figures['wer']:.3f}",
        flush=True,
    )
    return figures


if __name__ == "__main__":
    asyncio.run(main())
