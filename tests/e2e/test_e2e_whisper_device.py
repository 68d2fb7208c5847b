"""Where the real server runs Whisper: ``whisper.device`` on this machine.

On a machine without a usable GPU (CI): ``auto`` serves on the CPU and says so, and
``cuda`` refuses to start with status 2 and one line. On a machine with one
(``benchmarks/gpu_check.sh``): ``cuda`` serves on it, and the recognizer's results hold
there as on the CPU. ``tests/e2e/test_e2e_whisper.py`` runs on whatever ``auto`` picks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import HOST, free_port, start_server
from transcripts import SAID, word_error_rate

from streamer.client import load_audio, stream_file
from streamer.inference.device import place, probe_gpus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        subprocess.run(
            [sys.executable, "-c", "import faster_whisper"], capture_output=True
        ).returncode
        != 0,
        reason="needs the whisper extra",
    ),
]

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
FOUND = probe_gpus()
needs_gpu = pytest.mark.skipif(
    not FOUND.usable, reason=f"needs a usable CUDA GPU: {FOUND.why_not or 'none found'}"
)
needs_no_gpu = pytest.mark.skipif(
    FOUND.usable, reason="this machine has a usable GPU: auto and cuda both take it"
)
CEILINGS = {"jfk.wav": 0.05, "cross_8k.wav": 0.0, "harvard_16k.wav": 0.1}


def _text(segments: list[dict[str, object]]) -> str:
    return " ".join(str(s["text"]) for s in segments if s["is_final"])


def _health(url: str) -> dict[str, object]:
    return dict(httpx.get(f"{url}/api/v1/health", timeout=10).json())


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


@needs_no_gpu
async def test_auto_serves_on_the_cpu_and_says_so(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        env={"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_LOG_LEVEL": "info"},
    )
    try:
        health = _health(server.http)
        assert (health["model"], health["device"]) == ("whisper-tiny.en", "cpu")
        metrics = _metrics(server.http)
        assert 'streamer_model_info{device="cpu",model="whisper-tiny.en"} 1.0' in metrics
        result = await stream_file(server.ws("segmented"), load_audio(AUDIO / "jfk.wav"))
        assert result.ok, result.errors
        assert word_error_rate(SAID["jfk.wav"], _text(result.segments)) <= 0.05
    finally:
        server.stop()
    said = [line for line in server.output().splitlines() if "whisper model runs on" in line]
    assert len(said) == 1, server.output()  # once, at start
    assert "runs on cpu (auto: no usable GPU: " in said[0]


def _refused(env: dict[str, str]) -> str:
    """``streamer serve --model whisper`` ended with status 2 and one line: that line."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    command = [sys.executable, "-m", "streamer.cli.main", "serve", "--host", HOST]
    command += ["--port", str(free_port()), "--no-grpc", "--model", "whisper"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**child_env, **env}
    )
    output = (done.stderr + done.stdout).strip()
    assert done.returncode == 2, output
    assert "Traceback" not in output
    (line,) = output.splitlines()
    return line


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_ends_serve_with_status_2_and_one_line(device: str) -> None:
    line = _refused({"STREAMER_WHISPER__DEVICE": device})
    assert f"cannot serve: whisper.device = '{device}', but " in line
    assert FOUND.why_not is not None and FOUND.why_not in line


def test_a_compute_type_the_cpu_cannot_run_ends_serve_with_status_2_and_one_line() -> None:
    line = _refused(
        {"STREAMER_WHISPER__DEVICE": "cpu", "STREAMER_WHISPER__COMPUTE_TYPE": "float16"}
    )
    assert "cannot serve: whisper.compute_type = 'float16' does not run on cpu (it takes " in line


@needs_gpu
async def test_cuda_serves_on_the_gpu_with_the_cpus_transcripts(tmp_path: Path) -> None:
    on_gpu = start_server(
        tmp_path / "gpu",
        env={"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_WHISPER__DEVICE": "cuda"},
    )
    on_cpu = start_server(
        tmp_path / "cpu",
        env={"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_WHISPER__DEVICE": "cpu"},
    )
    try:
        assert _health(on_gpu.http)["device"] == "cuda:0"
        assert _health(on_cpu.http)["device"] == "cpu"
        metrics = _metrics(on_gpu.http)
        assert 'streamer_model_info{device="cuda:0",model="whisper-tiny.en"} 1.0' in metrics
        for name, ceiling in CEILINGS.items():
            audio = load_audio(AUDIO / name)
            gpu, cpu = await asyncio.gather(
                stream_file(on_gpu.ws("segmented"), audio, results_timeout=120),
                stream_file(on_cpu.ws("segmented"), audio, results_timeout=120),
            )
            assert gpu.ok and cpu.ok, (gpu.errors, cpu.errors)
            # float16 against int8: the same words within the recognizer's ceiling, and
            # the same segmentation (the VAD runs on the CPU either way).
            assert word_error_rate(SAID[name], _text(gpu.segments)) <= ceiling, gpu.segments
            times = [(s["start_time"], s["end_time"]) for s in gpu.segments if s["is_final"]]
            assert times == [
                (s["start_time"], s["end_time"]) for s in cpu.segments if s["is_final"]
            ]
    finally:
        on_gpu.stop()
        on_cpu.stop()


@needs_gpu
async def test_on_the_gpu_concurrent_streams_are_batched_and_each_transcribed(
    tmp_path: Path,
) -> None:
    server = start_server(
        tmp_path,
        env={"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_WHISPER__DEVICE": "cuda"},
    )
    try:
        names = [name for name in CEILINGS for _ in range(8)]
        results = await asyncio.gather(
            *(
                stream_file(server.ws("segmented"), load_audio(AUDIO / name), results_timeout=120)
                for name in names
            )
        )
        for name, result in zip(names, results, strict=True):
            assert result.ok, result.errors
            said = _text(result.segments)
            assert word_error_rate(SAID[name], said) <= CEILINGS[name], (name, said)
        # Segments of several streams shared a call: more inputs than calls.
        batches = server.gauge("streamer_batch_size_count")
        assert server.gauge("streamer_batch_size_sum") > batches > 0
    finally:
        server.stop()


def _descendants(pid: int) -> set[int]:
    """Every process under ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent]
        found.update(children)
        frontier.extend(children)
    return found


def _loaded(pids: set[int], library: str) -> set[int]:
    """Those of ``pids`` that loaded ``library`` (nvidia-smi lists no processes inside
    many containers; the maps say who loaded CTranslate2, and cuBLAS for a GPU)."""
    holding = set()
    for pid in pids:
        try:
            if library in Path(f"/proc/{pid}/maps").read_text():
                holding.add(pid)
        except OSError:
            continue
    return holding


async def test_front_end_processes_share_one_model_process(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        workers=2,
        env={"STREAMER_INFERENCE__MODEL": "whisper", "STREAMER_INFERENCE__POOL": "shared"},
    )
    try:
        health = _health(server.http)
        assert (health["model"], health["device"]) == ("whisper-tiny.en", place("auto").name)
        names = list(CEILINGS) * 2
        results = await asyncio.gather(
            *(
                stream_file(server.ws("segmented"), load_audio(AUDIO / name), results_timeout=120)
                for name in names
            )
        )
        for name, result in zip(names, results, strict=True):
            assert result.ok, result.errors
            assert word_error_rate(SAID[name], _text(result.segments)) <= CEILINGS[name]
        # Two front-end processes; one process loaded the model (and, on a GPU, cuBLAS).
        under = _descendants(server.process.pid)
        (model_process,) = _loaded(under, "libctranslate2")
        assert _loaded(under, "libcublas") == ({model_process} if FOUND.usable else set())
    finally:
        server.stop()


@needs_gpu
@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import ray.serve"], capture_output=True).returncode != 0,
    reason="needs the ray extra",
)
async def test_front_end_processes_share_one_model_on_the_gpu_through_ray(
    tmp_path: Path,
) -> None:
    server = start_server(
        tmp_path,
        workers=2,
        env={
            "STREAMER_INFERENCE__MODEL": "whisper",
            "STREAMER_INFERENCE__BACKEND": "ray",
            "STREAMER_RAY__REPLICA_GPUS": "1",
            "STREAMER_RAY__NUM_CPUS": "2",
        },
    )
    try:
        assert _health(server.http)["device"] == "cuda:0"  # the replica's, as it reports
        names = list(CEILINGS) * 4
        results = await asyncio.gather(
            *(
                stream_file(server.ws("segmented"), load_audio(AUDIO / name), results_timeout=120)
                for name in names
            )
        )
        for name, result in zip(names, results, strict=True):
            assert result.ok, result.errors
            assert word_error_rate(SAID[name], _text(result.segments)) <= CEILINGS[name]
        # Two front-end processes, one process with the model on the GPU: the replica.
        assert len(_loaded(_descendants(server.process.pid), "libcublas")) == 1
    finally:
        server.stop()
