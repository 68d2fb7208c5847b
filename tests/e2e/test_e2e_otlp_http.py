"""Spans over OTLP/HTTP (``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``) to a real receiver."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import HOST, start_server
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from streamer.client import load_audio, stream_file

pytestmark = pytest.mark.e2e

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "10f067aa0ba902b7"


class _Collector(ThreadingHTTPServer):
    """Keeps ``(path, content type, spans)`` of every export it is sent."""

    def __init__(self) -> None:
        super().__init__((HOST, 0), _Handler)
        self.exports: list[tuple[str, str, list[tuple[str, str, str]]]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        spans = [
            (span.name, span.trace_id.hex(), span.parent_span_id.hex())
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        with self.server.lock:
            self.server.exports.append((self.path, self.headers["Content-Type"], spans))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_the_stream_span_reaches_an_otlp_http_collector(
    tmp_path: Path, collector: _Collector
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{collector.server_address[1]}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = start_server(tmp_path, env=env)
    try:
        result = await stream_file(
            server.ws("segmented"),
            load_audio(AUDIO / "cross_8k.wav"),
            trace_id=f"00-{TRACE}-{PARENT}-01",
        )
        assert result.ok, result.errors
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with collector.lock:
                spans = [s for _, _, batch in collector.exports for s in batch]
            if ("streamer.stream", TRACE, PARENT) in spans:
                break
            await asyncio.sleep(0.1)
    finally:
        server.stop()
    assert ("streamer.stream", TRACE, PARENT) in spans, spans
    assert any(name == "streamer.inference" and trace == TRACE for name, trace, _ in spans)
    paths = {(path, kind) for path, kind, _ in collector.exports}
    assert paths == {("/v1/traces", "application/x-protobuf")}
