"""The connection limits' settings, as uvicorn and the gRPC server receive them."""

from __future__ import annotations

from streamer.config import ServerSettings, Settings
from streamer.transport.limits import grpc_server_options, uvicorn_protocols, uvicorn_ws_max_size


def test_the_documented_defaults() -> None:
    server = Settings().server
    assert server.ws_ping_interval_seconds == 20
    assert server.ws_ping_timeout_seconds == 20
    assert server.grpc_keepalive_seconds == 20
    assert server.grpc_keepalive_timeout_seconds == 20
    assert server.handshake_timeout_seconds == 10
    assert server.max_connections == 1000
    assert server.max_text_bytes == 65536
    assert server.max_message_bytes == 1 << 20
    assert server.max_messages_per_second == 200
    stream = Settings().stream
    assert (stream.idle_seconds, stream.max_audio_seconds, stream.max_wall_seconds) == (10, 0, 0)


def test_the_driver_hands_the_settings_to_the_machine() -> None:
    from streamer.app import build_services
    from streamer.protocol.connection import Limits

    settings = Settings.model_validate(
        {
            "server": {"grpc_enabled": False, "max_messages_per_second": 50},
            "stream": {"idle_seconds": 3, "max_audio_seconds": 60, "max_wall_seconds": 90},
        }
    )
    assert build_services(settings).limits == Limits(3, 60, 90, 50)


def test_grpc_options_carry_keepalive_handshake_and_cap() -> None:
    server = ServerSettings(
        grpc_keepalive_seconds=1.5,
        grpc_keepalive_timeout_seconds=2,
        handshake_timeout_seconds=0.25,
        max_connections=7,
    )
    options = dict(grpc_server_options(server))
    assert options["grpc.keepalive_time_ms"] == 1500
    assert options["grpc.keepalive_timeout_ms"] == 2000
    assert options["grpc.http2.ping_timeout_ms"] == 2000
    assert options["grpc.server_handshake_timeout_ms"] == 250
    assert options["grpc.max_allowed_incoming_connections"] == 7
    uncapped = dict(grpc_server_options(ServerSettings(max_connections=0)))
    assert "grpc.max_allowed_incoming_connections" not in uncapped


def test_uvicorn_protocols_are_bound_to_the_settings() -> None:
    server = ServerSettings(
        max_connections=3,
        handshake_timeout_seconds=0.5,
        max_text_bytes=2048,
        max_message_bytes=4096,
    )
    http, ws = uvicorn_protocols(server)
    assert (http.max_connections, http.handshake_timeout) == (3, 0.5)
    assert (ws.max_text_bytes, ws.max_binary_bytes) == (2048, 4096)
    assert uvicorn_ws_max_size(server) == 4096
    assert uvicorn_ws_max_size(ServerSettings(max_text_bytes=8192, max_message_bytes=4096)) == 8192
