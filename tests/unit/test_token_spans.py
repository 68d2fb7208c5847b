"""Tokens through the app in-process: the grant, a token in the URL, and spans that never
carry it."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from streamer.app import create_app
from streamer.config import Settings
from streamer.observability.tracing import Tracing

KEY = "unit-key-spans-01"
SECRET = "unit-span-secret-0123456789abcdefghij"
START = {"request": "start", "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16}}


def test_a_token_in_the_url_reaches_no_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env({}, exporters=[exporter])
    settings = Settings(auth={"api_keys": [KEY], "token_secret": SECRET})
    app = create_app(settings, tracing=tracing)
    with TestClient(app) as client:
        granted = client.post(
            "/api/v1/auth/grant", headers={"Authorization": f"Bearer {KEY}"}, json={}
        )
        assert granted.status_code == 200, granted.text
        token = granted.json()["token"]
        with client.websocket_connect(f"/api/v1/segmented?token={token}") as ws:
            ws.send_text(json.dumps(START))
            assert ws.receive_json()["type"] == "ready"
            ws.send_bytes(b"\0\0" * 1600)
            ws.send_text(json.dumps({"request": "stop"}))
            while ws.receive_json()["type"] != "done":
                pass
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    assert {span.name for span in spans} >= {"streamer.connection", "streamer.stream"}
    text = " ".join(
        f"{span.name} {dict(span.attributes or {})} {[e.attributes for e in span.events]}"
        for span in spans
    )
    assert token not in text and KEY not in text
    tracing.shutdown()


def test_the_grant_is_not_found_without_a_secret_and_needs_a_key() -> None:
    app = create_app(Settings(auth={"api_keys": [KEY]}))
    with TestClient(app) as client:
        assert client.post("/api/v1/auth/grant").status_code == 401
        off = client.post("/api/v1/auth/grant", headers={"Authorization": f"Token {KEY}"})
        assert off.status_code == 404 and "token_secret" in off.json()["message"]


def test_the_page_is_served_without_a_referrer() -> None:
    with TestClient(create_app(Settings())) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'src="/demo/app.js"' in page.text
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        script = client.get("/demo/app.js")
        assert script.status_code == 200 and "audioWorklet.addModule" in script.text
        assert "ScriptProcessor" not in script.text
        assert client.get("/demo/capture.js").status_code == 200
