"""Observability end to end: a real server, real speech, a real Prometheus, a real OTLP receiver.

One server runs for the module, with a test model that fails and crashes now and then. A
handful of streams run through it at once; the tests then read what Prometheus scraped,
what the OTLP receiver got and what the server logged, and compare each with what the
clients saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import soundfile as sf
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from websockets.asyncio.client import connect

from streamer.client import load_audio

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
START_TIMEOUT = 30.0
WAIT = 20.0  # for scrapes and span exports to catch up
SECRET = "s3cr3t-in-the-url"
TRACE_A = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_B = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(check: Any, what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


# A real OTLP receiver.


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: list[str]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP trace service, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.service_names: set[str] = set()
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(_value(attribute.value))
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                links=[link.span_id.hex() for link in span.links],
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    service = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    yield service, port
    server.stop(None).wait()


# The server.


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self, route: str) -> str:
        return f"ws://{HOST}:{self.port}/api/v1/{route}"


CONFIG = """\
log_level = "info"
log_json = true
[server]
drain_seconds = 1.0
grpc_port = 0
[inference]
workers = 2
[model]
failure_rate = 0.15
panic_rate = 0.05
seed = 7
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, receiver: tuple[Receiver, int]
) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("observed")
    config = directory / "streamer.toml"
    config.write_text(CONFIG)
    log = directory / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMER_", "OTEL_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:{receiver[1]}",
        OTEL_SERVICE_NAME="streamer-e2e",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    command = [sys.executable, "-m", "streamer.cli.main", "serve", "--host", HOST]
    command += ["--port", str(port), "--config", str(config)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Server(process, port, log)

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{running.output()}")
        try:
            return httpx.get(f"http://{HOST}:{port}/api/v1/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, "the server to start", START_TIMEOUT)
    yield running
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# A real Prometheus.


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "the prometheus binary is missing (Debian package 'prometheus')"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{message}; scripts/system-deps.sh installs it")
        pytest.skip(f"{message}; run scripts/system-deps.sh")
    return found


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: streamer\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{HOST}:{server.port}']\n"
    )
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{HOST}:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, "prometheus to start", START_TIMEOUT)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Traffic: real speech through both routes, at once.


@dataclass
class Stream:
    route: str
    file: str
    events: list[dict[str, Any]] = field(default_factory=list)
    bytes_sent: int = 0
    messages: int = 0
    stderr: str = ""

    @property
    def ready(self) -> dict[str, Any]:
        assert self.events and self.events[0]["type"] == "ready", self.events[:1]
        return self.events[0]

    def count(self, kind: str, **match: Any) -> int:
        return sum(
            1
            for e in self.events
            if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
        )


async def run(
    server: Server,
    stream: Stream,
    *,
    real_time: bool = False,
    query: str = "",
    headers: dict[str, str] | None = None,
    **start: Any,
) -> None:
    data, rate = sf.read(AUDIO / stream.file, dtype="int16")
    pcm = data.astype("<i2").tobytes()
    chunk = rate // 10 * 2  # 100 ms
    fmt = {"channels": 1, "sample_rate": rate, "bit_depth": 16, "is_float": False}
    url = server.url(stream.route) + query
    async with connect(url, additional_headers=headers, compression=None) as ws:
        await ws.send(json.dumps({"request": "start", "format": fmt, **start}))
        began = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), chunk)):
            if real_time:
                await asyncio.sleep(max(0.0, began + index * 0.1 - time.monotonic()))
            await ws.send(pcm[offset : offset + chunk])
            stream.bytes_sent += len(pcm[offset : offset + chunk])
            stream.messages += 1
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        async for message in ws:
            stream.events.append(json.loads(message))
    assert stream.events[-1]["type"] == "done", stream.events[-3:]


async def run_cli(stream: Stream, url: str) -> None:
    """The real client, with ``--trace``: its stderr names the traceparent it sent."""
    audio = load_audio(AUDIO / stream.file)
    stream.bytes_sent = len(audio.data)
    stream.messages = -(-len(audio.data) // audio.chunk_bytes())
    command = [sys.executable, "-m", "streamer.cli.main", "client", "--json", "--trace"]
    process = await asyncio.create_subprocess_exec(
        *command,
        *("-i", str(AUDIO / stream.file), "--addr", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    stream.events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    stream.stderr = err.decode()


@pytest.fixture(scope="module")
def traffic(server: Server) -> dict[str, Stream]:
    """Every stream the module's tests look at, run at once before any of them."""
    streams = {
        "traced": Stream("segmented", "big_dog_8k.wav"),
        "headers": Stream("segmented", "jfk.wav"),
        "simple": Stream("simple", "harvard_16k.wav"),
        "secret": Stream("simple", "front_center_48k.wav"),
        "cli": Stream("simple", "front_center_48k.wav"),
    }

    async def all_at_once() -> None:
        await asyncio.gather(
            run(server, streams["traced"], real_time=True, trace_id=TRACE_A, interim_results=True),
            run(server, streams["headers"], headers={"traceparent": TRACE_B}, interim_results=True),
            run(server, streams["simple"]),
            run(server, streams["secret"], query=f"?token={SECRET}"),
            run_cli(streams["cli"], server.url("simple")),
        )

    asyncio.run(all_at_once())
    return streams


def test_prometheus_sees_the_streams_rtf_and_latency(
    prometheus: Prometheus, traffic: dict[str, Stream]
) -> None:
    streams = list(traffic.values())
    by_route = Counter(s.route for s in streams)
    events = Counter((s.route, e["type"]) for s in streams for e in s.events)
    finals = Counter(s.route for s in streams for e in s.events if e.get("is_final") is True)
    interims = Counter(s.route for s in streams for e in s.events if e.get("is_final") is False)
    codes = Counter(e["code"] for s in streams for e in s.events if e["type"] == "error")
    answered = Counter(s.route for s in streams if s.count("segment") or s.count("active"))
    ran = sum(events[r, "segment"] for r in by_route) + codes["model_error"]
    ran += codes["model_crashed"]

    def scraped_after_traffic() -> bool:
        done = prometheus.value("sum(streamer_events_sent_total{type='done'})")
        return done == len(streams)

    wait_for(scraped_after_traffic, "a scrape after the streams")

    started = prometheus.by("streamer_streams_started_total", "route")
    assert started == {"simple": by_route["simple"], "segmented": by_route["segmented"]}
    ended = prometheus.by(
        "sum by (route) (streamer_streams_ended_total{outcome='completed'})", "route"
    )
    assert ended == started
    assert prometheus.value("sum(streamer_streams_active)") == 0

    for route in by_route:
        final = prometheus.value(f"streamer_final_latency_seconds_count{{route='{route}'}}")
        interim = prometheus.value(f"streamer_interim_latency_seconds_count{{route='{route}'}}")
        first = prometheus.value(f"streamer_time_to_first_result_seconds_count{{route='{route}'}}")
        assert (final, interim, first) == (finals[route], interims[route], answered[route])
        for kind in ("segment", "error", "ready", "done"):
            sent = prometheus.value(f"streamer_events_sent_total{{route='{route}', type='{kind}'}}")
            assert sent == events[route, kind], (route, kind)
    assert interims["segmented"] > 0 and finals["segmented"] > 0

    rtf = prometheus.by("streamer_stage_real_time_factor_count", "stage")
    # A speculative final withdrawn once a worker had it ran for nothing: the model ran at
    # least once per result, and at most once more per speculation discarded.
    discarded = prometheus.value("sum(streamer_speculative_finals_total{outcome='discarded'})")
    assert ran <= rtf["model"] <= ran + (discarded or 0), (rtf["model"], ran, discarded)
    assert all(rtf[stage] > 0 for stage in ("decode", "resample", "vad")), rtf
    p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) (streamer_stage_real_time_factor_bucket"
        "{stage='vad'}))"
    )
    # The quantile is computed from the exported buckets; how fast the VAD runs is
    # benchmarks/bench_vad.py's to say, not a test's on a shared machine.
    assert p99 is not None and p99 > 0

    audio = sum(sf.info(AUDIO / s.file).duration for s in streams)
    decoded = prometheus.value("streamer_stage_media_duration_seconds_sum{stage='decode'}")
    assert decoded == pytest.approx(audio, abs=1e-3)

    assert prometheus.value("streamer_model_failures_total") == codes["model_error"]
    assert prometheus.value("streamer_model_crashes_total") == codes["model_crashed"]
    errors = prometheus.by("streamer_error_events_total > 0", "code")
    assert errors == {code: float(n) for code, n in codes.items()}
    received = prometheus.value("sum(streamer_received_bytes_total)")
    assert received == sum(s.bytes_sent for s in streams)
    frames = prometheus.value("sum(streamer_received_frames_total)")
    assert frames == sum(s.messages for s in streams)
    assert (prometheus.value("streamer_event_loop_lag_seconds_count") or 0) > 0


def test_every_dashboard_query_runs_on_prometheus(
    prometheus: Prometheus, traffic: dict[str, Stream]
) -> None:
    queries = [
        target["expr"]
        for path in DASHBOARDS.glob("*.json")
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]
    assert queries
    for expr in queries:
        prometheus.query(expr.replace("$__rate_interval", "5s"))  # asserts success


def test_the_streams_spans_reach_the_otlp_receiver_under_the_clients_spans(
    receiver: tuple[Receiver, int], traffic: dict[str, Stream]
) -> None:
    spans = receiver[0]
    ids = {name: s.ready["session_id"] for name, s in traffic.items()}

    def exported() -> dict[str, ReceivedSpan] | None:
        found = {
            span.attributes.get("streamer.stream_id"): span
            for span in spans.named("streamer.stream")
        }
        if not all(i in found for i in ids.values()):
            return None
        return {name: found[i] for name, i in ids.items()}

    streams = wait_for(exported, "the stream spans")
    assert "streamer-e2e" in spans.service_names
    for name, traceparent in (("traced", TRACE_A), ("headers", TRACE_B)):
        _, trace_id, span_id, _ = traceparent.split("-")
        span = streams[name]
        assert (span.trace_id, span.parent_span_id) == (trace_id, span_id)
        # The ready event names the stream's own span in the client's trace.
        assert traffic[name].ready["trace_id"].split("-")[1:3] == [trace_id, span.span_id]
        assert span.attributes["streamer.outcome"] == "completed"
        assert span.attributes["streamer.route"] == "segmented"
    connections = {s.span_id: s for s in spans.named("streamer.connection")}
    traced, by_header = streams["traced"], streams["headers"]
    (link,) = traced.links
    assert link in connections  # the stream links to its connection
    assert connections[by_header.links[0]].parent_span_id == TRACE_B.split("-")[2]
    # Untraced streams hang under their connection, in a trace of their own.
    untraced = streams["simple"]
    assert untraced.parent_span_id in connections
    assert untraced.trace_id not in (TRACE_A.split("-")[1], TRACE_B.split("-")[1])

    def children(kind: str) -> bool:
        parents = {s.parent_span_id for s in spans.named(kind)}
        return all(streams[name].span_id in parents for name in ("traced", "headers"))

    wait_for(lambda: children("streamer.inference"), "inference spans")
    wait_for(lambda: children("streamer.vad"), "VAD spans")
    wait_for(lambda: children("streamer.decode"), "decode spans")


def test_every_line_of_a_stream_names_it_and_its_trace(
    server: Server, traffic: dict[str, Stream]
) -> None:
    traced = traffic["traced"].ready
    trace_id = traced["trace_id"].split("-")[1]

    def logged() -> list[dict[str, Any]] | None:
        lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]
        mine = [line for line in lines if line.get("stream_id") == traced["session_id"]]
        return lines if any(line["message"] == "stream ended" for line in mine) else None

    lines = wait_for(logged, "the stream's last log line")
    mine = [line for line in lines if line.get("stream_id") == traced["session_id"]]
    assert mine[0]["message"] == "stream started"
    assert all(line["trace_id"] == trace_id for line in mine)
    errors = traffic["traced"].count("error")
    assert sum(line["message"].startswith("error event") for line in mine) == errors
    text = server.output()
    assert SECRET not in text
    assert "token=[redacted]" in text
    assert max(len(line) for line in text.splitlines()) < 4000  # no audio in any line


def test_the_client_sends_a_traceparent_with_trace(
    receiver: tuple[Receiver, int], traffic: dict[str, Stream]
) -> None:
    cli = traffic["cli"]
    printed = [line.split()[-1] for line in cli.stderr.splitlines() if "traceparent" in line]
    assert len(printed) == 1, cli.stderr
    version, trace_id, span_id, flags = printed[0].split("-")
    assert (version, flags, len(trace_id), len(span_id)) == ("00", "01", 32, 16)
    assert cli.ready["trace_id"].split("-")[1] == trace_id

    def exported() -> ReceivedSpan | None:
        for span in receiver[0].named("streamer.stream"):
            if span.attributes.get("streamer.stream_id") == cli.ready["session_id"]:
                return span
        return None

    span = wait_for(exported, "the client's stream span")
    assert (span.trace_id, span.parent_span_id) == (trace_id, span_id)
