"""The model tier on Ray Serve: a real server whose model runs as a Ray Serve deployment on
a local Ray cluster (2 CPUs, half a CPU per replica), against the local backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from transcripts import SAID, word_error_rate
from websockets.asyncio.client import connect

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
RAY = {
    "STREAMER_INFERENCE__BACKEND": "ray",
    "STREAMER_RAY__NUM_CPUS": "2",
    "STREAMER_RAY__REPLICA_CPUS": "0.5",
    "STREAMER_RAY__REPLICAS": "2",
}


def health(srv: Any) -> dict[str, Any]:
    return dict(httpx.get(f"{srv.http}/api/v1/health", timeout=5).json())


async def test_ray_gives_the_local_backends_results(
    launch: Callable[..., Any], server: Any
) -> None:
    remote = launch(env=RAY)
    audio = load_audio(AUDIO / "jfk.wav")
    answered = 0
    for route in ("segmented", "simple"):
        local = await stream_file(server.ws(route), audio)
        on_ray = await stream_file(remote.ws(route), audio)
        assert local.ok and on_ray.ok, on_ray.events
        assert on_ray.segments == local.segments and on_ray.segments
        assert on_ray.ready["model"] == local.ready["model"]
        answered += len(on_ray.segments)  # one input each
    # Every input that ran is counted with the size of the replica batch it ran in: each
    # one answered, and a speculative final discarded once it had started, if any.
    discarded = remote.gauge("streamer_speculative_finals_total", outcome="discarded")
    ran = remote.gauge("streamer_ray_batch_size_count")
    assert answered <= ran <= answered + discarded, (ran, answered, discarded)
    assert remote.gauge("streamer_ray_batch_size_sum") >= answered


async def test_a_replica_that_dies_gives_worker_crashed_and_the_stream_goes_on(
    launch: Callable[..., Any],
) -> None:
    remote = launch(
        env={
            **RAY,
            "STREAMER_MODEL__PANIC_RATE": "0.3",
            "STREAMER_MODEL__PANIC_KILLS_PROCESS": "true",
        }
    )
    audio = load_audio(AUDIO / "jfk.wav")
    result = await stream_file(remote.ws("simple"), audio, results_timeout=90)
    assert result.done is not None, result.events
    codes = [e["code"] for e in result.errors]
    assert codes and set(codes) == {"worker_crashed"}
    assert all(e["retryable"] for e in result.errors)
    # Every one-second chunk has one outcome: a result, or the crash of its replica.
    assert len(result.segments) + len(codes) == 11


async def test_a_stream_that_goes_leaves_nothing_queued(launch: Callable[..., Any]) -> None:
    # A slow model (0.5 s a call, one batch in flight): a stream sent at once queues its
    # chunks; when it disconnects the queued ones are withdrawn before any is sent to Ray.
    remote = launch(env={**RAY, "STREAMER_MODEL__DELAY": "0.5", "STREAMER_INFERENCE__WORKERS": "1"})
    audio = load_audio(AUDIO / "jfk.wav")
    gone = await connect(remote.ws("simple"))
    await gone.send(json.dumps({"request": "start", "format": audio.format}))
    assert json.loads(await gone.recv())["type"] == "ready"
    await gone.send(audio.data)
    async with asyncio.timeout(60):  # until its chunks queue (up to stream.max_in_flight)
        while health(remote)["queued_inferences"] < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await gone.close()
    async with asyncio.timeout(60):  # a bound for a busy machine, not the measure
        while True:
            body = health(remote)
            if body["queued_inferences"] == 0 and body["busy_workers"] == 0:
                break
            await asyncio.sleep(0.05)
    # The next stream is not behind the one that went: its results are all its own.
    later = await stream_file(remote.ws("simple"), load_audio(AUDIO / "big_dog_8k.wav"))
    assert later.ok and len(later.segments) == 3


async def test_whisper_on_ray_gives_the_local_backends_transcripts(
    launch: Callable[..., Any],
) -> None:
    # One input a call on either backend: a batch of several may differ from one alone
    # in a letter's case, say (docs/benchmarks.md), and batches form by timing.
    # On the CPU on both: a replica without ray.replica_gpus is shown no GPU.
    whisper = {
        "STREAMER_INFERENCE__MODEL": "whisper",
        "STREAMER_WHISPER__MAX_BATCH_SIZE": "1",
        "STREAMER_WHISPER__DEVICE": "cpu",
    }
    # Ray runs a replica of under one CPU with OMP_NUM_THREADS=1, which can change a
    # letter's case in int8 decoding (docs/scaling.md): the local server runs so too.
    local = launch(env={**whisper, "OMP_NUM_THREADS": "1"})
    remote = launch(env={**RAY, **whisper, "STREAMER_WHISPER__DEVICE": "auto"})
    # The replica says where it runs the model; the front-end reports it.
    assert health(remote)["device"] == health(local)["device"] == "cpu"
    audio = load_audio(AUDIO / "jfk.wav")
    for route in ("simple", "segmented"):
        here, there = await asyncio.gather(
            stream_file(local.ws(route), audio, results_timeout=120),
            stream_file(remote.ws(route), audio, results_timeout=120),
        )
        assert here.ok and there.ok, there.events
        assert there.ready["model"] == here.ready["model"] == "whisper-tiny.en"
        assert there.segments == here.segments and there.segments
    said = " ".join(str(s["text"]) for s in there.segments)  # the segmented route's
    assert word_error_rate(SAID["jfk.wav"], said) <= 0.05, said


def descendants(pid: int) -> list[str]:
    """The command lines of every process under ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, of in parents.items():
            if of == parent:
                frontier.append(child)
                with contextlib.suppress(OSError):
                    found.append((Path("/proc") / str(child) / "cmdline").read_text())
    return found


async def test_front_end_processes_share_one_cluster_and_one_deployment(
    launch: Callable[..., Any], server: Any
) -> None:
    logs = {"STREAMER_LOG_LEVEL": "info", "STREAMER_LOG_JSON": "true"}
    remote = launch(env={**RAY, **logs}, workers=2)
    audio = load_audio(AUDIO / "jfk.wav")
    local = await stream_file(server.ws("segmented"), audio)
    results = await asyncio.gather(*(stream_file(remote.ws("segmented"), audio) for _ in range(12)))
    assert all(r.ok and r.segments == local.segments for r in results)
    placed = {}
    for line in remote.output().splitlines():
        if line.startswith("{") and (entry := json.loads(line)).get("message") == "stream started":
            placed[entry["stream_id"]] = entry["worker"]
    assert {placed[r.ready["session_id"]] for r in results} == {0, 1}, "both processes"
    # One local cluster, started by the supervisor, with the deployment's two replicas.
    processes = descendants(remote.process.pid)
    assert sum("gcs_server" in p for p in processes) == 1, processes
    assert sum("ServeReplica" in p for p in processes) == 2, processes
    answered = 12 * len(local.segments)
    # Each answered input ran once; a speculative final discarded once it had started
    # ran too (as in the test above).
    discarded = remote.gauge("streamer_speculative_finals_total", outcome="discarded")
    ran = remote.gauge("streamer_ray_batch_size_count")
    assert answered <= ran <= answered + discarded, (ran, answered, discarded)
