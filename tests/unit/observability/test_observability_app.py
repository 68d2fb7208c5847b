"""The service's metrics and spans, in process: real app, real pipeline, counted honestly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from numpy.typing import NDArray
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from websockets.asyncio.client import connect

from streamer.app import create_app
from streamer.config import Settings
from streamer.inference.model import ModelFailure, Output
from streamer.observability.tracing import Tracing

AUDIO = Path(__file__).resolve().parents[2] / "fixtures" / "audio"
RATE = 16000
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class EveryNth:
    """A model that fails every ``fail``-th call and crashes every ``crash``-th (counted
    across all streams), so a run's failures are known in advance."""

    name = "every-nth"
    sample_rate = RATE
    max_batch_size = 1

    def __init__(self, fail: int = 0, crash: int = 0) -> None:
        self.fail = fail
        self.crash = crash
        self.calls = 0
        self._lock = threading.Lock()

    def infer(self, audio: NDArray[np.float32]) -> Output:
        with self._lock:
            self.calls += 1
            call = self.calls
        if self.crash and call % self.crash == 0:
            raise RuntimeError("crashed")
        if self.fail and call % self.fail == 0:
            raise ModelFailure("failed")
        return {"count": len(audio)}

    def infer_batch(self, batch: Sequence[NDArray[np.float32]]) -> list[Output | Exception]:
        out: list[Output | Exception] = []
        for audio in batch:
            try:
                out.append(self.infer(audio))
            except Exception as exc:
                out.append(exc)
        return out


def settings() -> Settings:
    return Settings.model_validate({"server": {"grpc_enabled": False}, "inference": {"workers": 1}})


def noise(seconds: float) -> bytes:
    rng = np.random.default_rng(0)
    return rng.normal(0, 2000, round(seconds * RATE)).astype("<i2").tobytes()


def speech(name: str = "jfk.wav") -> tuple[bytes, int]:
    data, rate = sf.read(AUDIO / name, dtype="int16")
    return data.astype("<i2").tobytes(), rate


def start(rate: int = RATE, **extra: Any) -> dict[str, Any]:
    fmt = {"channels": 1, "sample_rate": rate, "bit_depth": 16, "is_float": False}
    return {"request": "start", "format": fmt, **extra}


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` on a free local port, in this loop; yields ``host:port``."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_config=None, ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def stream(
    address: str,
    route: str,
    data: bytes,
    *,
    rate: int = RATE,
    chunk: int = 3200,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One stream on its own connection; returns its events up to ``done``."""
    events: list[dict[str, Any]] = []
    url = f"ws://{address}/api/v1/{route}"
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send(json.dumps(start(rate, **extra)))
        for offset in range(0, len(data), chunk):
            await ws.send(data[offset : offset + chunk])
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        async for message in ws:
            events.append(json.loads(message))
    assert events[-1]["type"] == "done"
    return events


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(address: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def app(model: EveryNth, tracing: Tracing | None = None) -> Starlette:
    return create_app(settings(), model, registry=CollectorRegistry(), tracing=tracing)


async def test_n_streams_with_k_failures_read_n_and_k() -> None:
    model = EveryNth(fail=3)
    streams, seconds = 4, 2.5  # three chunks each (1 s, 1 s, 0.5 s): twelve calls
    data = noise(seconds)
    async with serving(app(model)) as address:
        results = await asyncio.gather(*(stream(address, "simple", data) for _ in range(streams)))
        samples = await scrape(address)
    events = [e for result in results for e in result]
    kinds = Counter(e["type"] for e in events)
    failures = sum(1 for e in events if e.get("code") == "model_error")
    assert model.calls == 12 and failures == 4  # known in advance: every third call
    assert get(samples, "streamer_streams_started_total", route="simple") == streams
    ended = get(samples, "streamer_streams_ended_total", route="simple", outcome="completed")
    assert ended == streams
    assert get(samples, "streamer_model_failures_total") == failures
    assert get(samples, "streamer_model_crashes_total") == 0
    assert get(samples, "streamer_error_events_total", code="model_error") == failures
    for kind, count in kinds.items():
        assert get(samples, "streamer_events_sent_total", route="simple", type=kind) == count
    assert get(samples, "streamer_final_latency_seconds_count", route="simple") == kinds["segment"]
    answered = sum(1 for result in results if any(e["type"] == "segment" for e in result))
    assert get(samples, "streamer_time_to_first_result_seconds_count", route="simple") == answered
    assert get(samples, "streamer_stage_real_time_factor_count", stage="model") == model.calls
    media = get(samples, "streamer_stage_media_duration_seconds_sum", stage="decode")
    assert media == pytest.approx(streams * seconds)
    assert get(samples, "streamer_queue_wait_seconds_count") == model.calls
    assert get(samples, "streamer_received_bytes_total", route="simple") == streams * len(data)
    messages = -(-len(data) // 3200)
    assert get(samples, "streamer_received_frames_total", route="simple") == streams * messages
    assert get(samples, "streamer_streams_active", route="simple") == 0
    assert get(samples, "streamer_connections_active", route="simple") == 0
    assert get(samples, "streamer_queue_depth") == 0
    assert get(samples, "streamer_workers") == 1
    assert get(samples, "streamer_tasks", subsystem="observability") == 1
    assert get(samples, "streamer_event_loop_lag_seconds_count") >= 0


async def test_crashes_and_disconnects_are_counted_apart() -> None:
    async with serving(app(EveryNth(crash=2))) as address:
        events = await stream(address, "simple", noise(2.0))
        async with connect(f"ws://{address}/api/v1/simple") as ws:
            await ws.send(json.dumps(start()))
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(noise(0.5))
        # The client went away mid-stream; wait until the server has counted it out.
        for _ in range(200):
            samples = await scrape(address)
            if get(samples, "streamer_streams_active", route="simple") == 0:
                break
            await asyncio.sleep(0.01)
    assert [e["code"] for e in events if e["type"] == "error"] == ["model_crashed"]
    assert get(samples, "streamer_model_crashes_total") == 1
    assert get(samples, "streamer_error_events_total", code="model_crashed") == 1
    assert get(samples, "streamer_streams_started_total", route="simple") == 2
    for outcome, count in (("completed", 1), ("disconnected", 1)):
        ended = get(samples, "streamer_streams_ended_total", route="simple", outcome=outcome)
        assert ended == count


async def test_speech_on_the_segmented_route_feeds_vad_and_latency_metrics() -> None:
    data, rate = speech()
    async with serving(app(EveryNth())) as address:
        events = await stream(address, "segmented", data, rate=rate, interim_results=True)
        samples = await scrape(address)
    kinds = Counter(e["type"] for e in events)
    finals = sum(1 for e in events if e["type"] == "segment" and e["is_final"])
    interims = kinds["segment"] - finals
    assert kinds["active"] >= 1 and finals == kinds["inactive"]
    route = {"route": "segmented"}
    assert get(samples, "streamer_final_latency_seconds_count", **route) == finals
    assert get(samples, "streamer_interim_latency_seconds_count", **route) == interims
    assert get(samples, "streamer_time_to_first_result_seconds_count", **route) == 1
    vad_media = get(samples, "streamer_stage_media_duration_seconds_sum", stage="vad")
    assert vad_media == pytest.approx(len(data) / 2 / rate, abs=0.05)
    assert get(samples, "streamer_vad_batch_size_sum") == pytest.approx(vad_media / 0.032)


async def test_the_ready_event_and_the_spans_carry_the_clients_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env({}, exporters=[exporter])
    async with serving(app(EveryNth(), tracing)) as address:
        sent = await stream(address, "simple", noise(1.5), trace_id=TRACEPARENT)
        header = {"traceparent": TRACEPARENT}
        by_header = await stream(address, "simple", noise(0.5), headers=header)
        untraced = await stream(address, "simple", noise(0.5))
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    tracing.shutdown()
    client_trace, client_span = TRACEPARENT.split("-")[1:3]
    streams = {
        s.attributes["streamer.stream_id"]: s  # type: ignore[index]
        for s in spans
        if s.name == "streamer.stream"
    }
    for events in (sent, by_header):
        ready = events[0]
        version, trace_id, span_id, _ = ready["trace_id"].split("-")
        assert (version, trace_id) == ("00", client_trace)
        span = streams[ready["session_id"]]
        assert span.context is not None and span.parent is not None
        assert f"{span.context.trace_id:032x}" == client_trace
        assert f"{span.parent.span_id:016x}" == client_span
        assert f"{span.context.span_id:016x}" == span_id
    own = untraced[0]["trace_id"].split("-")[1]
    assert own != client_trace and len(own) == 32
    inferences = [s for s in spans if s.name == "streamer.inference"]
    stream_ids = {s.context.span_id for s in streams.values()}  # type: ignore[union-attr]
    assert len(inferences) == 4  # 1 s + 0.5 s, then 0.5 s, then 0.5 s
    assert all(s.parent is not None and s.parent.span_id in stream_ids for s in inferences)
    connections = [s for s in spans if s.name == "streamer.connection"]
    assert len(connections) == 3


# The dashboard reads only what the server exports.

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "dashboards"
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (as exported: with ``_bucket`` and the
    like), leaving out functions, keywords, label names and numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval included
    text = _GROUPING.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum by (route) (streamer_streams_active)", {"streamer_streams_active"}),
        (
            "histogram_quantile(0.99, sum by (le, stage) "
            '(rate(streamer_stage_real_time_factor_bucket{stage="vad"}[$__rate_interval])))',
            {"streamer_stage_real_time_factor_bucket"},
        ),
        ("a_sum / on (x) group_left b_count > 0 and c", {"a_sum", "b_count", "c"}),
        ("process_resident_memory_bytes / 2^30 + 1e3", {"process_resident_memory_bytes"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for path in sorted(DASHBOARD.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                queries.append((panel["title"], target["expr"]))
    return queries


async def test_every_dashboard_query_names_a_metric_the_server_exports() -> None:
    data, rate = speech("big_dog_8k.wav")
    served = create_app(settings(), EveryNth())  # as served: with the process collectors
    async with serving(served) as address:
        await stream(address, "segmented", data, rate=rate, interim_results=True)
        await stream(address, "simple", noise(1.0))
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://{address}/metrics")).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    queries = dashboard_queries()
    assert len(queries) >= 20
    missing = {
        (title, name)
        for title, expr in queries
        for name in metric_names(expr)
        if name not in exported
    }
    assert not missing, f"dashboard queries read metrics the server does not export: {missing}"
    # The panels the operators asked for, by what they read.
    read = {name for _, expr in queries for name in metric_names(expr)}
    for needed in (
        "streamer_streams_active",
        "streamer_stage_real_time_factor_bucket",
        "streamer_final_latency_seconds_bucket",
        "streamer_error_events_total",
        "streamer_event_loop_lag_seconds_bucket",
        "streamer_queue_depth",
    ):
        assert needed in read
